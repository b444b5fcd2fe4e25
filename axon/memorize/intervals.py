"""The tables of summary.md that pool every seed of a cell (model x loss) and give bootstrap
95% intervals over its documents (axon/memorize/statistics.py), from per_document.json's
last-epoch scores:

* interval_table: exact match, the reference extraction (all but the last 50 tokens), canary
  extraction, the membership AUCs (loss, zlib ratio) and ACR (share above 1, mean over the
  documents above 1), targets with controls beside them;
* extraction_table: the share of windows reproduced against the prompt's length.

A document is the unit: with several seeds the documents of every seed are pooled (each seed
draws its own documents and trains its own model), and an AUC is averaged over seeds, each
seed's targets against its own controls.
"""

from __future__ import annotations

import math

import numpy as np

from axon.memorize.statistics import auc, auc_interval, interval


def _cells(documents: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(model, loss tag) -> its runs' per-document records, one per seed, in run order."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for record in documents:
        cells.setdefault((record["model"], record["loss"]), []).append(record)
    return cells


def _pooled(records: list[dict], side: str, key: str) -> np.ndarray:
    return np.concatenate([np.asarray(r.get(side, {}).get(key, []), dtype=float) for r in records] or [np.zeros(0)])


def _with_interval(values: np.ndarray, digits: int = 2) -> str:
    values = values[~np.isnan(values)]
    if not values.size:
        return "n/a"
    low, high = interval(values)
    return f"{values.mean():.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _auc_cell(records: list[dict], key: str) -> str:
    pairs = [(r["targets"].get(key, []), r["controls"].get(key, [])) for r in records]
    values = [auc(t, c) for t, c in pairs if len(t) and len(c)]
    if not values:
        return "n/a"
    low, high = auc_interval(pairs)
    return f"{np.mean(values):.2f} [{low:.2f}, {high:.2f}]"


def _acr_cells(records: list[dict]) -> tuple[str, str]:
    """(share of targets with ACR > 1 with its interval, mean ACR over those documents)."""
    acr = np.concatenate([np.asarray(r["targets_acr"]["acr"], dtype=float) for r in records if "targets_acr" in r]
                         or [np.zeros(0)])
    if not acr.size:
        return "n/a", "n/a"
    memorized = acr[acr > 1]
    return _with_interval((acr > 1).astype(float)), (f"{memorized.mean():.2f}" if memorized.size else "none")


def _tail_key(records: list[dict]) -> str | None:
    return next((k for k in records[0]["targets"] if k.startswith("extract_tail")), None)


def interval_table(documents: list[dict]) -> str:
    cells = _cells(documents)
    if not cells:
        return ""
    first = next(iter(cells.values()))
    tail = _tail_key(first)
    has_acr = any("targets_acr" in r for r in documents)
    head = ["model", "loss", "seeds", "documents", "exact match", "control EM"]
    if tail:
        head += [f"extraction, last {tail[len('extract_tail'):]}", "control"]
    head += ["canary extraction", "control", "MIA AUC (loss)", "MIA AUC (zlib)"]
    if has_acr:
        head += ["ACR > 1", "mean ACR of those", "control ACR > 1"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|" + "---:|" * (len(head) - 4)]
    for (model, loss), records in cells.items():
        row = [model, loss.replace("-", " "), str(len(records)), str(_pooled(records, "targets", "exact_match").size),
               _with_interval(_pooled(records, "targets", "exact_match")),
               _with_interval(_pooled(records, "controls", "exact_match"))]
        if tail:
            row += [_with_interval(_pooled(records, "targets", tail)), _with_interval(_pooled(records, "controls", tail))]
        canaries = [np.concatenate([np.asarray(r.get(key, []), dtype=float) for r in records])
                    for key in ("canary_extraction", "control_canary_extraction")]
        row += [_with_interval(canaries[0]), _with_interval(canaries[1]), _auc_cell(records, "loss"),
                _auc_cell(records, "zlib_ratio")]
        if has_acr:
            share, mean = _acr_cells(records)
            controls = [{"targets_acr": r["controls_acr"]} for r in records if "controls_acr" in r]
            row += [share, mean, _acr_cells(controls)[0] if controls else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    return ("\n\nEvery seed pooled, last epoch: means over documents with bootstrap 95% intervals (documents "
            "resampled; AUCs averaged over seeds, each seed's targets against its controls: 0.5 is chance, 1 "
            "separates them).\n\n" + "\n".join(lines))


def extraction_table(documents: list[dict]) -> str:
    cells = _cells(documents)
    if not cells:
        return ""
    keys = [k for k in next(iter(cells.values()))[0]["targets"] if k.startswith("extract_")]
    if not keys:
        return ""
    names = [f"{k[len('extract_p'):]} tokens" if k.startswith("extract_p") else f"all but last {k[len('extract_tail'):]}"
             for k in keys]
    lines = ["| model | loss | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(keys)]
    for (model, loss), records in cells.items():
        row = []
        for key in keys:
            target, control = _pooled(records, "targets", key), _pooled(records, "controls", key)
            mean = lambda v: "n/a" if not v[~np.isnan(v)].size else f"{np.nanmean(v):.2f}"
            row.append(f"{mean(target)} / {mean(control)}")
        lines.append(f"| {model} | {loss.replace('-', ' ')} | " + " | ".join(row) + " |")
    return ("\n\nExtraction against the prompt: the share of windows whose next `suffix` tokens greedy decoding "
            "reproduces from the given number of tokens before them alone (targets / controls; n/a: documents too "
            "short).\n\n" + "\n".join(lines))


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per model, loss and epoch: numbers averaged over the seeds (NaNs left out)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["loss_kind"], row["k"], row["h"], row["strategy"], row["epoch"]),
                          []).append(row)
    out = []
    for members in groups.values():
        merged = dict(members[0])
        for key, value in merged.items():
            if isinstance(value, float):
                values = [m[key] for m in members if isinstance(m.get(key), float) and not math.isnan(m[key])]
                merged[key] = float(np.mean(values)) if values else float("nan")
        out.append(merged)
    return out


MEASURES = (("exact_match", "exact match"), ("extract_tail", "extraction, all but the last tokens"),
            ("canary_extraction", "canary extraction"), ("loss", "membership AUC (loss)"))


def _measure(records: list[dict], key: str) -> tuple[float, float, float]:
    """(mean, low, high) of one measure of a cell, every seed pooled."""
    if key == "loss":
        pairs = [(r["targets"].get("loss", []), r["controls"].get("loss", [])) for r in records]
        values = [auc(t, c) for t, c in pairs if len(t) and len(c)]
        return (float(np.mean(values)), *auc_interval(pairs)) if values else (np.nan, np.nan, np.nan)
    if key == "canary_extraction":
        values = np.concatenate([np.asarray(r.get(key, []), dtype=float) for r in records])
    else:
        key = _tail_key(records) if key == "extract_tail" else key
        values = _pooled(records, "targets", key) if key else np.zeros(0)
    values = values[~np.isnan(values)]
    return (float(values.mean()), *interval(values)) if values.size else (np.nan, np.nan, np.nan)


def plot_measures_vs_size(path, documents: list[dict], params: dict[str, int]) -> None:
    """measures_vs_size.png: one panel per measure, one line per loss against parameters, each
    point the mean over every seed's documents with its bootstrap 95% interval."""
    import matplotlib.pyplot as plt

    cells = _cells(documents)
    losses = list(dict.fromkeys(loss for _, loss in cells))
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], MEASURES):
        for index, loss in enumerate(losses):
            points = sorted((params[model], *_measure(records, key)) for (model, name), records in cells.items()
                            if name == loss and model in params)
            x = np.array([p[0] for p in points], dtype=float) * 1.04 ** index  # side by side, not on top
            mean, low, high = (np.array([p[i] for p in points]) for i in (1, 2, 3))
            ax.errorbar(x, mean, yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)], fmt="o-", capsize=3,
                        markersize=4, label=loss.replace("-", " "))
        ax.set(xscale="log", xlabel="parameters", title=title, ylim=(-0.03, 1.03))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
