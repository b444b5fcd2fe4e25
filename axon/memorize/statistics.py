"""The statistics a memorization report gives beside its means, in numpy alone.

* auc: the membership-inference AUC of a score where a lower value says "trained on" (a
  document's loss, or its loss over its zlib-compressed length): the probability that a
  random target scores lower than a random control, ties counting one half. This is the
  Mann-Whitney U statistic over n_targets x n_controls, computed from average ranks.
* interval: a percentile bootstrap 95% interval of a mean over documents (resampled with
  replacement, a fixed generator seed, so a report is the same every time it is written).
* auc_interval: the same for the AUC (averaged over seeds, each seed's own targets against its
  own controls), targets and controls resampled apart within each seed.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20240417  # fixed: intervals are part of the results, so they must not move between writes


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` in ascending order, tied values sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # a tie group at 0-based first..first+c-1
    return ranks


def auc(targets: np.ndarray, controls: np.ndarray) -> float:
    """P(target score < control score) + P(equal) / 2; NaN without both kinds of document."""
    targets, controls = np.asarray(targets, dtype=float), np.asarray(controls, dtype=float)
    n, m = targets.size, controls.size
    if not n or not m:
        return float("nan")
    above = average_ranks(np.concatenate([targets, controls]))[:n].sum() - n * (n + 1) / 2  # pairs target > control
    return float(1 - above / (n * m))


def interval(values, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean of `values` (NaNs left out); (nan, nan) when empty."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, values.size, size=(samples, values.size))
    low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def auc_interval(pairs, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean over `pairs` (one (targets, controls) per seed) of `auc`,
    each seed's targets and controls resampled with replacement apart."""
    pairs = [(np.asarray(t, dtype=float), np.asarray(c, dtype=float)) for t, c in pairs]
    pairs = [(t, c) for t, c in pairs if t.size and c.size]
    if not pairs:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [np.mean([auc(t[rng.integers(0, t.size, t.size)], c[rng.integers(0, c.size, c.size)]) for t, c in pairs])
              for _ in range(samples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
