"""What the Goldfish loss costs on the held-out filler: the validation-loss gap of each Goldfish
loss against the standard loss of the same model and seed (goldfish / standard - 1), three ways:

* last: both runs at their last evaluated epoch;
* at convergence: each run's lowest val loss over its evaluated epochs. A run whose lowest is its
  last evaluated epoch is "still falling": it has not converged, and the gap is provisional;
* at equal supervised tokens: Goldfish's last-epoch val loss against the standard run's at the
  epoch where the standard run had supervised as many tokens as Goldfish did in all its training,
  epoch_eq = E_goldfish x kept_goldfish / kept_standard (each run's mean kept_fraction), read by
  linear interpolation between evaluated epochs; None (n/a) outside them, never extrapolated.

Seeds: one row per seed, then with several seeds the mean with the smallest and largest.
"""

from __future__ import annotations

import math

import numpy as np


def loss_label(row: dict) -> str:
    if row["loss_kind"] == "standard":
        return "standard"
    return f"goldfish k={row['k']} h={row['h']}" + ("" if row["strategy"] == "hash" else f" {row['strategy']}")


def _runs(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(model, loss label, seed) -> that run's rows that hold a val loss, by epoch."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        value = row.get("val_loss")
        if value is not None and not math.isnan(value):
            runs.setdefault((row["model"], loss_label(row), row.get("seed")), []).append(row)
    return {key: sorted(members, key=lambda r: r["epoch"]) for key, members in runs.items()}


def _lowest(run: list[dict]) -> tuple[float, int, bool]:
    """(lowest val loss, its epoch, still falling: the lowest is the last evaluated epoch)."""
    best = min(run, key=lambda r: r["val_loss"])
    return best["val_loss"], best["epoch"], best is run[-1]


def run_gaps(rows: list[dict]) -> list[dict]:
    """One dict per Goldfish run that has a standard run of the same model and seed: the three gaps
    in percent (equal_tokens None where epoch_eq is outside the standard run's evaluated epochs)."""
    runs = _runs(rows)
    out = []
    for (model, label, seed), gold in runs.items():
        standard = runs.get((model, "standard", seed))
        if label == "standard" or standard is None:
            continue
        low_gold, low_standard = _lowest(gold), _lowest(standard)
        kept = [np.mean([r["kept_fraction"] for r in run]) for run in (gold, standard)]
        epoch_eq = gold[-1]["epoch"] * kept[0] / kept[1]
        epochs = [r["epoch"] for r in standard]
        at_eq = (float(np.interp(epoch_eq, epochs, [r["val_loss"] for r in standard]))
                 if epochs[0] <= epoch_eq <= epochs[-1] else None)
        gap = lambda a, b: 100 * (a / b - 1)
        out.append({"model": model, "loss": label, "seed": seed, "epoch": gold[-1]["epoch"],
                    "last": gap(gold[-1]["val_loss"], standard[-1]["val_loss"]),
                    "converged": gap(low_gold[0], low_standard[0]),
                    "lowest_epochs": (low_gold[1], low_standard[1]), "still_falling": (low_gold[2], low_standard[2]),
                    "epoch_eq": epoch_eq, "equal_tokens": None if at_eq is None else gap(gold[-1]["val_loss"], at_eq)})
    return out


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def _spread(values: list) -> str:
    """Mean [min, max] over seeds of the values that exist; how many of them where some are n/a."""
    found = [v for v in values if v is not None]
    if not found:
        return "n/a"
    cell = f"{_pct(float(np.mean(found)))} [{_pct(min(found))}, {_pct(max(found))}]"
    return cell if len(found) == len(values) else f"{cell} ({len(found)} of {len(values)} seeds)"


def _lowest_cell(gap: dict) -> str:
    return " / ".join(f"{epoch}" + (" still falling" if falling else "")
                      for epoch, falling in zip(gap["lowest_epochs"], gap["still_falling"]))


def loss_gap_table(rows: list[dict]) -> str:
    """The gaps as a markdown table with its lead-in; "" without a standard and Goldfish pair."""
    gaps = run_gaps(rows)
    if not gaps:
        return ""
    lines = ["| model | loss | seed | epochs | last epoch | at convergence | lowest at epoch (goldfish / standard) | "
             "at equal supervised tokens | standard's epoch of equal tokens |", "|---|---|---|---:|" + "---:|" * 5]
    cells: dict[tuple, list[dict]] = {}
    for gap in gaps:
        cells.setdefault((gap["model"], gap["loss"]), []).append(gap)
    for (model, loss), members in cells.items():
        for g in members:
            eq = f"{g['epoch_eq']:.2f}" + ("" if g["equal_tokens"] is not None else " (not evaluated)")
            lines.append(f"| {model} | {loss} | {g['seed']} | {g['epoch']} | {_pct(g['last'])} | "
                         f"{_pct(g['converged'])} | {_lowest_cell(g)} | {_pct(g['equal_tokens'])} | {eq} |")
        if len(members) > 1:
            falling = [sum(g["still_falling"][i] for g in members) for i in (0, 1)]
            lines.append(f"| {model} | {loss} | mean [min, max] of {len(members)} | "
                         f"{', '.join(sorted({str(g['epoch']) for g in members}))} | "
                         f"{_spread([g['last'] for g in members])} | {_spread([g['converged'] for g in members])} | "
                         f"still falling: goldfish {falling[0]}, standard {falling[1]} of {len(members)} | "
                         f"{_spread([g['equal_tokens'] for g in members])} | "
                         f"{np.mean([g['epoch_eq'] for g in members]):.2f} |")
    return ("\n\nFiller val loss of each Goldfish loss against the standard loss of the same model and seed, in "
            "percent (goldfish / standard - 1; positive: Goldfish is worse). Last epoch: both runs at their last "
            "evaluated epoch. At convergence: each run's lowest val loss over its evaluated epochs, at the epochs "
            "given; \"still falling\" marks a run whose lowest is its last evaluated epoch, which has not converged, "
            "so that gap is provisional. At equal supervised tokens: Goldfish's last-epoch val loss against the "
            "standard run's at the epoch where it had supervised as many tokens (Goldfish's epochs x its kept "
            "fraction / the standard's kept fraction), interpolated linearly between evaluated epochs; n/a where "
            "that epoch was not evaluated (before the first evaluation: not extrapolated).\n\n" + "\n".join(lines))
