"""What a memorization sweep leaves in out_dir (rank 0 writes it):

results.csv / results.json   one row per model, loss and evaluated epoch (RESULT_COLUMNS)
per_document.json            each run's last per-document scores (Rouge-L histograms come from it)
placements.json              where every target was injected (global sequence index, step, offset in the
                             sequence), for the first seed
exact_match_vs_epoch.png     exact match against epoch, one panel per loss, one line per model
rougeL_hist.png              last-epoch Rouge-L of the targets, one panel per model, losses overlaid
epochs_to_50_vs_size.png     the first evaluated epoch with exact match >= 50% against parameters, per loss
measures_vs_size.png         exact match, extraction of the last tokens, canary extraction and membership AUC
                             against parameters, per loss, with bootstrap 95% intervals over every seed's documents
<measure>_vs_size.png        one measure against parameters (log), last epoch, a line per loss with its bootstrap
                             95% interval over every seed's documents, controls dashed: exact_match, token_acc,
                             rougeL, exposure, canary_extraction, mia_auc_loss, mia_auc_zlib and extract_tail<N>
                             (all but the last N tokens), each where measured (intervals.plot_vs_size)
<measure>_vs_exposures.png   the same measures against the times each target was seen (epochs), a line per
                             model and loss (mean over seeds, shaded from the lowest to the highest seed),
                             controls dashed
lr_selection.json / .md      with lr: auto, each probe's validation loss and the rate chosen (axon.memorize.lr_selection)
summary.md                   the last-epoch table (ACR columns where measured), the learning-rate choice, the
                             filler val loss split by
                             Goldfish's never-supervised recurring tokens, Goldfish's filler val-loss gap against
                             the standard loss (last epoch, at convergence, at equal supervised tokens;
                             axon/memorize/loss_gaps.py), the epochs-to-50% table, and per model and loss over
                             every seed: exact match, extraction, canary extraction, membership AUCs and ACR with
                             bootstrap 95% intervals over documents (axon/memorize/statistics.py), and extraction
                             against the prompt's length
With several seeds, the plots show the mean over seeds (the size plots pool every seed's documents).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from axon.memorize.documents import DocumentSets
from axon.memorize.intervals import MEASURES, extraction_table, interval_table, mean_over_seeds, plot_vs_size
from axon.memorize.loss_gaps import loss_gap_table, loss_label

# The columns of results.csv, in order: what runner's rows hold and write_results writes.
RESULT_COLUMNS = ("model", "params", "loss_kind", "k", "h", "strategy", "lr", "seed", "epoch", "step", "exact_match",
                  "token_acc", "rougeL", "exposure", "control_exact_match", "control_token_acc", "control_rougeL",
                  "control_exposure", "canary_extraction", "control_canary_extraction", "mia_auc_loss", "mia_auc_zlib",
                  "acr", "acr_memorized", "control_acr", "control_acr_memorized", "val_loss",
                  "val_loss_recurring_dropped", "val_loss_rest", "val_recurring_dropped_fraction", "train_loss", "kept_fraction", "train_seconds", "acr_seconds")

LABELS = {"exact_match": "exact match", "control_exact_match": "control exact match", "token_acc": "token acc",
          "rougeL": "Rouge-L", "exposure": "exposure (bits)", "control_exposure": "control exposure",
          "val_loss": "filler val loss", "kept_fraction": "tokens in loss", "acr": "ACR (mean of > 1)", "acr_memorized": "ACR > 1",
          "control_acr": "control ACR (mean of > 1)", "control_acr_memorized": "control ACR > 1"}
ACR_COLUMNS = ("acr", "acr_memorized", "control_acr", "control_acr_memorized")


def result_columns(rows: list[dict]) -> list[str]:
    """RESULT_COLUMNS, then the extraction columns the rows hold (one per prompt length)."""
    extra = [k for k in (rows[0] if rows else {}) if k.startswith(("extract_", "control_extract_"))]
    return list(RESULT_COLUMNS) + extra


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_setup(out: Path, exp, docs: DocumentSets, runs) -> None:
    stream = runs[0].stream  # the placements depend on the batch and the counts only, the same for every run
    sizes = [min(t.size, stream.seq_len + 1) for t in stream.trained]
    placements = [{"target": i, "kind": "document" if i < len(docs.targets) else "canary",
                   "sequences": seqs, "steps": [g // runs[0].config.train.global_batch for g in seqs],
                   "offsets": [stream.offset(g, sizes[i]) for g in seqs]}
                  for i, seqs in enumerate(stream.placements())]
    (out / "placements.json").write_text(json.dumps(
        {"targets": docs.source, "documents": len(docs.targets), "canaries": len(docs.target_canaries),
         "controls": len(docs.controls), "control_canaries": len(docs.control_canaries),
         "sequences_per_epoch": stream.per_epoch, "steps_per_epoch": stream.steps_per_epoch,
         "placements": placements}, indent=1))


def write_results(out: Path, rows: list[dict]) -> None:
    (out / "results.json").write_text(json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows], indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        columns = result_columns(rows)
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if _missing(row.get(k)) else row[k]) for k in columns})


def write_per_document(out: Path, documents: list[dict]) -> None:
    (out / "per_document.json").write_text(json.dumps(documents))


def _final(rows: list[dict]) -> list[dict]:
    last = {}
    for row in rows:
        last[(row["model"], row["loss_kind"], row["k"], row["h"], row["strategy"], row.get("seed"))] = row
    return list(last.values())


def epochs_to_half(rows: list[dict]) -> list[dict]:
    """Per model and loss: the first evaluated epoch whose exact match (mean over seeds) reaches 50%, or None."""
    out = {}
    for row in mean_over_seeds(rows):
        key = (row["model"], loss_label(row))
        entry = out.setdefault(key, {"model": row["model"], "params": row["params"], "loss": loss_label(row),
                                     "epoch": None, "evaluated": 0})
        entry["evaluated"] = row["epoch"]
        if entry["epoch"] is None and row["exact_match"] >= 0.5:
            entry["epoch"] = row["epoch"]
    return list(out.values())


def half_table(rows: list[dict]) -> str:
    lines = ["| model | params | loss | first epoch with exact match >= 50% | epochs run |", "|---|---:|---|---:|---:|"]
    for e in epochs_to_half(rows):
        lines.append(f"| {e['model']} | {e['params'] / 1e6:.2f}M | {e['loss']} | "
                     f"{'never' if e['epoch'] is None else e['epoch']} | {e['evaluated']} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    cols = ("exact_match", "control_exact_match", "token_acc", "rougeL", "exposure", "control_exposure",
            "val_loss", "kept_fraction")
    if any(not _missing(row.get("acr_memorized")) for row in _final(rows)):
        cols = cols[:6] + ACR_COLUMNS + cols[6:]
    seeds = len({r.get("seed") for r in rows}) > 1
    lines = ["| model | params | lr | loss | " + ("seed | " if seeds else "") + "epochs | "
             + " | ".join(LABELS[c] for c in cols) + " |",
             "|---|---:|---:|---|" + ("---:|" if seeds else "") + "---:|" + "---:|" * len(cols)]
    standard = {(r["model"], r.get("seed"), r["epoch"]): r.get("val_loss") for r in rows if r["loss_kind"] == "standard"}
    for row in _final(rows):
        cells = []
        for c in cols:
            value = row.get(c)
            cells.append("n/a" if _missing(value) else
                         (f"{value:.2f}" if "exposure" in c or c.endswith("acr") else f"{value:.3f}"))
            base = standard.get((row["model"], row.get("seed"), row["epoch"]))
            if c == "val_loss" and row["loss_kind"] != "standard" and not _missing(value) and not _missing(base):
                cells[-1] += f" ({100 * (value / base - 1):+.1f}%)"  # against the standard loss, same model and epoch
        lr = row.get("lr")
        lines.append(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {'n/a' if _missing(lr) else f'{lr:.1e}'} | "
                     f"{loss_label(row)} | " + (f"{row.get('seed')} | " if seeds else "") + f"{row['epoch']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_table(rows: list[dict]) -> str:
    """Last epoch (mean over seeds): the filler val loss on the tokens Goldfish never supervises in
    their recurring context and on the rest, with the change against the same model's standard loss."""
    final = mean_over_seeds([r for r in _final(rows) if not _missing(r.get("val_loss_recurring_dropped"))])
    if not final:
        return ""
    standard = {r["model"]: r for r in final if r["loss_kind"] == "standard"}
    lines = ["| model | loss | share of tokens | recurring, dropped | rest |", "|---|---|---:|---:|---:|"]
    for row in final:
        cells = []
        for key in ("val_loss_recurring_dropped", "val_loss_rest"):
            cells.append(f"{row[key]:.3f}")
            base = standard.get(row["model"], {}).get(key)
            if row["loss_kind"] != "standard" and not _missing(base):
                cells[-1] += f" ({100 * (row[key] / base - 1):+.1f}%)"
        lines.append(f"| {row['model']} | {loss_label(row)} | {row['val_recurring_dropped_fraction']:.3f} | "
                     + " | ".join(cells) + " |")
    return ("\n\nFiller val loss apart on the held-out tokens that the Goldfish loss drops and whose window of h "
            "ids recurs in the training filler (so it never supervises them there), and on the rest.\n\n"
            + "\n".join(lines))


def _spread(values: list) -> tuple[float, float, float]:
    """(mean, lowest, highest) of the values that are numbers; NaNs where none is."""
    values = np.array([v for v in values if not _missing(v)], dtype=float)
    return (values.mean(), values.min(), values.max()) if values.size else (np.nan,) * 3


def _plot_vs_exposures(plt, path: Path, rows: list[dict], column: str, title: str) -> bool:
    """One measure against epoch, a line per model and loss: the mean over seeds, shaded from the
    lowest seed to the highest, the controls' mean dashed where the rows hold them; False (nothing
    written) where no row measured it."""
    runs: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        runs.setdefault((row["model"], loss_label(row)), {}).setdefault(row["epoch"], []).append(row)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for (model, label), by_epoch in runs.items():
        epochs = sorted(by_epoch)
        mean, low, high = np.array([_spread([r.get(column) for r in by_epoch[e]]) for e in epochs]).T
        if np.isnan(mean).all():
            continue
        drawn = True
        line, = ax.plot(epochs, mean, "o-", markersize=3, label=f"{model}, {label}")
        if any(len(members) > 1 for members in by_epoch.values()):
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        control = np.array([_spread([r.get(f"control_{column}") for r in by_epoch[e]])[0] for e in epochs])
        if not np.isnan(control).all():
            ax.plot(epochs, control, "x--", color=line.get_color(), alpha=0.6, label=f"{model}, {label}: controls")
    if drawn:
        ax.set(xlabel="times each target was seen (epochs)", ylabel=title, title=f"{title} vs times seen")
        if column != "exposure":  # the rest are rates or AUCs
            ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def _selection(out: Path) -> str:
    """How the lr: auto rates were chosen (axon.memorize.lr_selection wrote it), when they were."""
    from axon.memorize.lr_selection import TABLE_FILE

    path = out / TABLE_FILE
    return f"\n\n{path.read_text()}" if path.is_file() else ""


def write_report(out: Path, rows: list[dict], documents: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a compute node
    import matplotlib.pyplot as plt

    per_seed, rows = rows, mean_over_seeds(rows)  # the plots show the mean over seeds
    losses = list(dict.fromkeys(loss_label(r) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))

    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 4), sharey=True, squeeze=False)
    for ax, label in zip(axes[0], losses):
        for model in models:
            points = [(r["epoch"], r["exact_match"]) for r in rows if r["model"] == model and loss_label(r) == label]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=3, label=model)
        ax.set(title=label, xlabel="epoch (times each target was seen)", ylim=(-0.03, 1.03))
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("exact-match rate")
    fig.tight_layout()
    fig.savefig(out / "exact_match_vs_epoch.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), sharey=True, squeeze=False)
    bins = [i / 20 for i in range(21)]
    for ax, model in zip(axes[0], models):
        for doc in documents:
            if doc["model"] == model and doc.get("targets"):
                label = doc["loss"].replace("-", " ")
                ax.hist(doc["targets"]["rougeL"], bins=bins, alpha=0.6, label=label)
        controls = next((d for d in documents if d["model"] == model and d.get("controls")), None)
        if controls is not None and controls["controls"]["rougeL"]:
            ax.hist(controls["controls"]["rougeL"], bins=bins, histtype="step", color="black", label="controls")
        ax.set(title=model, xlabel="Rouge-L of the greedy suffix")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("documents")
    fig.tight_layout()
    fig.savefig(out / "rougeL_hist.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    halves = epochs_to_half(rows)
    ceiling = max(e["evaluated"] for e in halves)
    for index, label in enumerate(losses):
        points = sorted((e["params"], e["epoch"]) for e in halves if e["loss"] == label)
        line, = ax.plot([p[0] for p in points if p[1] is not None], [p[1] for p in points if p[1] is not None], "o-",
                        label=label)
        never = [p[0] for p in points if p[1] is None]
        if never:  # drawn above the last epoch run, hollow, side by side: not reached
            ax.plot([x * 1.06 ** index for x in never], [ceiling * 1.1] * len(never), "^", mfc="none",
                    color=line.get_color(), label=f"{label}: never (> {ceiling})")
    ax.axhline(ceiling, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="parameters", ylabel="first epoch with exact match >= 50%", ylim=(0, ceiling * 1.2),
           title="Memorization speed vs model size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "epochs_to_50_vs_size.png", dpi=120)
    plt.close(fig)

    plots = plot_vs_size(out, documents, {r["model"]: r["params"] for r in rows})  # exact_match_vs_size.png too
    for key in MEASURES:
        column = next((c for c in per_seed[0] if c.startswith("extract_tail")), None) if key == "extract_tail" else key
        if column and _plot_vs_exposures(plt, out / f"{column}_vs_exposures.png", per_seed, column, MEASURES[key]):
            plots.append(f"{column}_vs_exposures.png")

    (out / "summary.md").write_text(
        "# Memorization sweep\n\nLast evaluated epoch of each run (rates are fractions of documents; exposure in "
        "bits; ACR where measured: mean over the documents whose ACR is above 1, and their share; lr: the run's peak "
        "learning rate; filler val loss with its change against the same model's standard loss).\n\n"
        + summary_table(per_seed) + _selection(out)
        + split_table(per_seed) + loss_gap_table(per_seed) + interval_table(documents) + extraction_table(documents)
        + "\n\nMemorization speed: the first evaluated epoch at which exact match reaches 50%.\n\n" + half_table(per_seed)
        + "\n\nPlots: exact_match_vs_epoch.png, rougeL_hist.png, epochs_to_50_vs_size.png, " + ", ".join(plots) + "\n")
