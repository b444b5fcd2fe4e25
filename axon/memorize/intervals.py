"""The tables of summary.md that pool every seed of a cell (model x loss) and give bootstrap
95% intervals over its documents (axon/memorize/statistics.py), from per_document.json's
last-epoch scores:

* interval_table: exact match, the reference extraction (all but the last 50 tokens), canary
  extraction, the membership AUCs (loss, zlib ratio) and ACR (share above 1, mean over the
  documents above 1), targets with controls beside them;
* extraction_table: the share of windows reproduced against the prompt's length;

and the same pooled means and intervals against model size (plot_vs_size): measures_vs_size.png
(PANELS side by side) and <measure>_vs_size.png (each of MEASURES, controls dashed), each measure
computed once for both.

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


# The measures plotted against model size (and, from the rows, against epochs in report.py): row
# column -> title. "extract_tail" stands for the extract_tail<N> column that a run measured.
MEASURES = {"exact_match": "exact match", "token_acc": "token accuracy", "rougeL": "Rouge-L",
            "exposure": "canary exposure (bits)", "canary_extraction": "canary extraction",
            "mia_auc_loss": "membership AUC (loss)", "mia_auc_zlib": "membership AUC (zlib ratio)",
            "extract_tail": "extraction, all but the last tokens"}
PANELS = ("exact_match", "extract_tail", "canary_extraction", "mia_auc_loss")  # measures_vs_size.png
AUC_SCORES = {"mia_auc_loss": "loss", "mia_auc_zlib": "zlib_ratio"}  # the per-document score each AUC ranks
PER_CANARY = ("exposure", "canary_extraction")  # kept per canary, beside targets/controls


def _measure(records: list[dict], key: str, side: str = "targets") -> tuple[float, float, float]:
    """(mean, low, high) of one measure of a cell, every seed pooled, for the targets or the controls
    (an AUC has no controls' value: it is targets against controls)."""
    if key in AUC_SCORES:
        score = AUC_SCORES[key]
        pairs = [(r["targets"].get(score, []), r["controls"].get(score, [])) for r in records]
        values = [auc(t, c) for t, c in pairs if len(t) and len(c)]
        return (float(np.mean(values)), *auc_interval(pairs)) if values and side == "targets" else (np.nan,) * 3
    if key in PER_CANARY:
        name = key if side == "targets" else f"control_{key}"
        values = np.concatenate([np.asarray(r.get(name, []), dtype=float) for r in records])
    else:
        key = _tail_key(records) if key == "extract_tail" else key
        values = _pooled(records, side, key) if key else np.zeros(0)
    values = values[~np.isnan(values)]
    return (float(values.mean()), *interval(values)) if values.size else (np.nan, np.nan, np.nan)


def _points_vs_size(cells: dict, params: dict[str, int], key: str) -> dict[str, tuple]:
    """loss -> (parameters, mean, low, high, controls' mean) of one measure, a point per model;
    losses that no model measured left out."""
    points = {}
    for loss in dict.fromkeys(loss for _, loss in cells):
        mine = sorted((params[model], records) for (model, name), records in cells.items()
                      if name == loss and model in params)
        mean, low, high = np.array([_measure(records, key) for _, records in mine]).reshape(-1, 3).T
        if not np.isnan(mean).all():
            points[loss] = (np.array([m[0] for m in mine], dtype=float), mean, low, high,
                            np.array([_measure(records, key, "controls")[0] for _, records in mine]))
    return points


def _draw_vs_size(ax, points: dict[str, tuple], key: str, controls: bool) -> None:
    """One measure on `ax`: a line per loss against parameters (log) with its intervals, the
    controls' means dashed if asked."""
    for index, (loss, (x, mean, low, high, control)) in enumerate(points.items()):
        x = x * 1.04 ** index  # side by side, not on top
        bars = ax.errorbar(x, mean, yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)], fmt="o-", capsize=3,
                           markersize=4, label=loss.replace("-", " "))
        if controls and not np.isnan(control).all():
            ax.plot(x, control, "x--", color=bars[0].get_color(), alpha=0.6, label=f"{loss.replace('-', ' ')}: controls")
    ax.set(xscale="log", xlabel="parameters", title=MEASURES[key])
    if key != "exposure":  # the rest are rates or AUCs
        ax.set_ylim(-0.03, 1.03)


def plot_vs_size(out, documents: list[dict], params: dict[str, int]) -> list[str]:
    """measures_vs_size.png (the PANELS side by side) and <measure>_vs_size.png for every measure
    some cell measured (controls dashed; the tail extraction named by its column, as in
    extract_tail50_vs_size.png), each point the mean over every seed's documents with its
    bootstrap 95% interval. Returns the names written."""
    import matplotlib.pyplot as plt

    cells = _cells(documents)
    if not cells:
        return []
    points = {key: _points_vs_size(cells, params, key) for key in MEASURES}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), squeeze=False)
    for ax, key in zip(axes[0], PANELS):
        _draw_vs_size(ax, points[key], key, controls=False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "measures_vs_size.png", dpi=120)
    plt.close(fig)
    written = ["measures_vs_size.png"]
    for key in (k for k in MEASURES if points[k]):
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw_vs_size(ax, points[key], key, controls=True)
        ax.set_ylabel(f"{MEASURES[key]} (last epoch)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = (_tail_key(next(iter(cells.values()))) if key == "extract_tail" else key) + "_vs_size.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(name)
    return written
