"""The report's statistics against hand-computed values: the membership AUC (Mann-Whitney),
bootstrap intervals, and the seed-pooled interval table built from them."""

from __future__ import annotations

import numpy as np
import pytest

from axon.memorize.intervals import extraction_table, interval_table, mean_over_seeds
from axon.memorize.statistics import auc, auc_interval, average_ranks, interval


def test_auc_is_the_share_of_target_control_pairs_where_the_target_scores_lower():
    # Pairs (target < control): 1 < 2.5, 4, 2 (3); 2 < 2.5, 4 and 2 = 2 (2.5); 3 < 4 (1): 6.5 of 9.
    assert auc([1, 2, 3], [2.5, 4, 2]) == pytest.approx(6.5 / 9)
    assert (auc([0, 1], [2, 3]), auc([2, 3], [0, 1]), auc([1, 1], [1, 1, 1])) == (1.0, 0.0, 0.5)
    assert np.isnan(auc([], [1.0]))
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_bootstrap_intervals_are_fixed_and_bracket_the_mean():
    values = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    low, high = interval(values)
    assert (low, high) == interval(values) and low < values.mean() < high and 0 <= low and high <= 1
    # by hand: the same draws as interval() makes
    picks = np.random.default_rng(20240417).integers(0, 10, size=(2000, 10))
    assert (low, high) == tuple(np.percentile(values[picks].mean(axis=1), [2.5, 97.5]))
    assert interval([0.25, 0.25, np.nan]) == (0.25, 0.25)  # NaN (too short a document) left out
    low, high = auc_interval([([1, 2, 3], [2.5, 4, 2]), ([0, 1], [2, 3])])
    assert low <= (6.5 / 9 + 1) / 2 <= high and high <= 1


def _records():
    """Two seeds of one cell, as per_document.json holds them."""
    out = []
    for seed, (em, loss, closs) in enumerate((([1, 1, 0], [0.1, 0.2, 0.9], [1.0, 1.1]),
                                                ([1, 0, 0], [0.3, 1.5, 0.4], [1.2, 0.2]))):
        out.append({"model": "m", "loss": "standard", "loss_kind": "standard", "seed": seed,
                    "targets": {"exact_match": em, "loss": loss, "zlib_ratio": loss, "extract_p8": [1, 0.5, np.nan],
                                "extract_tail50": [1, 1, 0]},
                    "controls": {"exact_match": [0, 0], "loss": closs, "zlib_ratio": closs,
                                 "extract_p8": [0, 0], "extract_tail50": [0, 0]},
                    "canary_extraction": [1.0], "control_canary_extraction": [0.0],
                    "targets_acr": {"acr": [4.0, 0.0, 2.0], "prompt": []},
                    "controls_acr": {"acr": [0.0, 0.0], "prompt": []}})
    return out


def test_interval_table_pools_seeds_documents_and_averages_aucs():
    records = _records()
    table = interval_table(records)
    em = np.array([1, 1, 0, 1, 0, 0], dtype=float)
    low, high = interval(em)
    aucs = [auc([0.1, 0.2, 0.9], [1.0, 1.1]), auc([0.3, 1.5, 0.4], [1.2, 0.2])]  # 1.0 and 2/6
    a_low, a_high = auc_interval([([0.1, 0.2, 0.9], [1.0, 1.1]), ([0.3, 1.5, 0.4], [1.2, 0.2])])
    acr_low, acr_high = interval(np.array([1, 0, 1, 1, 0, 1], dtype=float))
    row = next(line for line in table.splitlines() if line.startswith("| m |"))
    assert row == (f"| m | standard | 2 | 6 | {em.mean():.2f} [{low:.2f}, {high:.2f}] | 0.00 [0.00, 0.00] | "
                   f"0.67 [{interval(np.array([1, 1, 0, 1, 1, 0.0]))[0]:.2f}, "
                   f"{interval(np.array([1, 1, 0, 1, 1, 0.0]))[1]:.2f}] | 0.00 [0.00, 0.00] | "
                   "1.00 [1.00, 1.00] | 0.00 [0.00, 0.00] | "
                   f"{np.mean(aucs):.2f} [{a_low:.2f}, {a_high:.2f}] | {np.mean(aucs):.2f} [{a_low:.2f}, {a_high:.2f}] | "
                   f"0.67 [{acr_low:.2f}, {acr_high:.2f}] | 3.00 | 0.00 [0.00, 0.00] |")
    # extraction against the prompt: pooled means, NaN windows left out (p8: 1, 0.5, 1, 0.5 -> 0.75)
    assert "| m | standard | 0.75 / 0.00 | 0.67 / 0.00 |" in extraction_table(records)


def test_mean_over_seeds_averages_numbers_per_model_loss_and_epoch():
    rows = [{"model": "m", "loss_kind": "standard", "k": None, "h": None, "strategy": None, "epoch": 1, "seed": s,
             "exact_match": v, "acr": float("nan")} for s, v in ((0, 0.25), (1, 0.75))]
    (merged,) = mean_over_seeds(rows)
    assert merged["exact_match"] == 0.5 and np.isnan(merged["acr"])
