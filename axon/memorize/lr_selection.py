"""Peak learning rates chosen once per model, before the reported runs (models with lr: auto).

Each such model trains the standard loss once per candidate of `lr_selection`, with that
section's seed (documents drawn, stream order, init) and on filler past every window the
reported runs read, so neither the seed nor the validation windows are theirs. The candidate
with the lowest validation loss at the last epoch is frozen for every loss and seed of the
sweep; a candidate that diverged loses. Rank 0 decides from its records and the other ranks
learn its choice through the store, so every rank trains the reported runs at the same rate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SELECTION_FILE = "lr_selection.json"
TABLE_FILE = "lr_selection.md"


def choose(rows: list[dict]) -> dict[str, float]:
    """model -> the candidate with the lowest finite val_loss (the smaller rate on a tie)."""
    best: dict[str, tuple[float, float]] = {}
    for row in sorted(rows, key=lambda r: (r["model"], r["lr"])):
        loss = row.get("val_loss")
        if loss is None or not math.isfinite(loss):
            continue
        if row["model"] not in best or loss < best[row["model"]][1]:
            best[row["model"]] = (row["lr"], loss)
    return {model: lr for model, (lr, _) in best.items()}


def table(rows: list[dict], chosen: dict[str, float]) -> str:
    """The probes as a markdown table: each model's candidates, their validation loss, the choice."""
    lines = ["| model | peak lr | filler val loss (selection split) | chosen |", "|---|---:|---:|---|"]
    for row in sorted(rows, key=lambda r: (r["model"], r["lr"])):
        loss = row.get("val_loss")
        shown = "diverged" if row.get("diverged") else "n/a" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"
        lines.append(f"| {row['model']} | {row['lr']:.1e} | {shown} | {'yes' if chosen.get(row['model']) == row['lr'] else ''} |")
    return "\n".join(lines)


def write(out: Path, selection, rows: list[dict], chosen: dict[str, float]) -> None:
    """Rank 0: the choice and its data, as JSON and as the table summary.md shows."""
    record = {"seed": selection.seed, "candidates": list(selection.candidates), "chosen": chosen,
              "criterion": "lowest filler validation loss at the last epoch, standard loss",
              "probes": [{key: row.get(key) for key in ("model", "lr", "val_loss", "train_loss", "diverged")}
                         for row in rows]}
    (out / SELECTION_FILE).write_text(json.dumps(record, indent=1, default=str))
    edges = edge_notes(selection.candidates, chosen)
    for note in edges:
        print(f"axon: memorize: {note}", flush=True)
    (out / TABLE_FILE).write_text(
        f"Peak learning rates (models with lr: auto): the standard loss trained once per candidate with seed "
        f"{selection.seed}, which no reported run uses, and scored on held-out filler that no reported run reads; "
        "the lowest validation loss at the last epoch was frozen for every loss and seed.\n\n" + table(rows, chosen)
        + "".join(f"\n\n{note}" for note in edges))


def edge_notes(candidates, chosen: dict[str, float]) -> list[str]:
    """A sentence per model whose choice is the smallest or largest candidate: the best rate may lie beyond."""
    notes = []
    for model, lr in chosen.items():
        if len(candidates) > 1 and lr in (min(candidates), max(candidates)):
            side = "largest" if lr == max(candidates) else "smallest"
            notes.append(f"model {model}: the chosen rate {lr:g} is the {side} candidate, so a "
                         f"{'larger' if side == 'largest' else 'smaller'} one may do better: widen lr_selection.candidates")
    return notes


def settle(runtime, out: Path, selection, probe_rows: list[dict], runs) -> dict[str, float]:
    """Every rank: rank 0's choice from the probes' rows, written to out and set as each lr: auto
    run's train.lr. A model whose every candidate diverged ends the sweep on every rank."""
    from axon.runtime.trainer import TrainingDiverged
    from axon.runtime.verdict import share_from_rank0

    verdict = None
    if runtime.rank == 0:
        chosen = choose(probe_rows)
        lost = [name for name in dict.fromkeys(run.model.name for run in runs if run.probe) if name not in chosen]
        verdict = {"lr": chosen}
        if lost:
            verdict = {"error": f"every lr_selection candidate ({', '.join(f'{c:g}' for c in selection.candidates)}) "
                                f"diverged for model {', '.join(lost)}: give smaller candidates"}
        else:
            write(out, selection, probe_rows, chosen)
    verdict = share_from_rank0(runtime, "memorize-lr", verdict)
    if "error" in verdict:
        raise TrainingDiverged(verdict["error"])
    for run in runs:
        if run.lr_auto:
            run.config.train.lr = verdict["lr"][run.model.name]
    return verdict["lr"]
