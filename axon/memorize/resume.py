"""A sweep that was stopped continues where it stopped, when rerun with the same command.

Per cell: a finished run (one model x loss x seed) leaves OUT_DIR/runs/TAG/cell.json with its
results rows and per-document scores, marked done; the rerun reads them instead of training it
again. Within a cell: the run checkpoints (train.checkpoint_every, and at a stop signal), and
its cell.json holds the rows evaluated so far; the rerun resumes from the newest checkpoint that
reads whole, keeps the rows of steps up to it, takes the epoch's earlier step losses from the
run's metrics.jsonl, and goes on. Training after a resume is the same computation (weights,
AdamW state, data position and step are in the checkpoint), so the results equal an
uninterrupted run's.

Each cell.json carries a fingerprint of what decides its numbers (the run's config but its
layout, the experiment section, the seed and the documents' token ids): a rerun with other
settings in the same out_dir stops with one sentence instead of mixing two experiments. The
layout is left out because checkpoints reshard: a requeued job may run on other node counts.
Rank 0 reads the files; the other ranks learn its verdict through the store (axon.runtime.verdict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from axon.config import ConfigError

CELL_FILE = "cell.json"


def fingerprint(exp, run) -> str:
    """What decides a run's numbers, hashed: config (layout aside), experiment section, seed, documents."""
    config = run.config.to_dict()
    config.pop("layout", None)
    if run.lr_auto:  # the rate the probes choose follows from how they choose it
        config["train"]["lr"] = {"auto": list(exp.lr_selection.candidates), "seed": exp.lr_selection.seed}
    docs = run.docs
    tokens = [d.tolist() for d in docs.trained() + docs.controls] + [c.tokens.tolist() for c in docs.control_canaries]
    what = {"config": config, "experiment": dataclasses.asdict(exp.section), "seed": run.seed, "tokens": tokens,
            "sources": [exp.targets, exp.controls, exp.tokenizer, exp.filler]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_path(run) -> Path:
    return Path(run.config.out_dir) / CELL_FILE


def read_cell(run, expected: str) -> dict | None:
    """The cell's record ({done, rows, documents, trained_s}), None when there is none; a
    record of another experiment is a ConfigError."""
    path = cell_path(run)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None  # torn by a kill mid-write (writes go through a rename, so an old axon's): start the cell over
    if record.get("fingerprint") != expected:
        raise ConfigError(f"{path} holds results of a run with other settings (model, loss, experiment, seed or "
                          f"documents) than this sweep's {run.model.name} / {run.loss.tag}: the sweep would mix two "
                          "experiments; give another out_dir, or move that run's folder aside")
    return record


def write_cell(run, expected: str, done: bool, rows: list[dict], documents: dict, trained_s: float) -> None:
    """Rank 0: the cell's record, replaced whole (a kill leaves the old one or the new one)."""
    path = cell_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(CELL_FILE + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": expected, "done": done, "rows": rows, "documents": documents,
                               "trained_s": trained_s}, default=_plain))
    os.replace(tmp, path)


def _plain(value):
    """numpy scalars as Python numbers (NaN stays NaN, which json writes and reads back)."""
    return value.item() if hasattr(value, "item") else str(value)


@dataclasses.dataclass
class CellStart:
    """Where one cell starts: done (skip it), from a checkpoint, or from scratch; and on rank 0
    what it had recorded."""
    done: bool = False
    checkpoint: str | None = None
    evaluated: tuple[int, ...] = ()  # epochs evaluated before the stop at steps up to the checkpoint's
    record: dict | None = None  # rank 0 only


def prepare_resume(exp, runs) -> tuple[list[CellStart], dict]:
    """Rank 0, before the ranks meet: each cell's start, and the verdict the others learn
    ({"cells": [[done, checkpoint], ...]} or {"error": sentence}). A cell without a record of
    this sweep starts from scratch: checkpoints its folder holds (an older sweep's) are moved
    aside, never deleted, so that they are not resumed from or mixed with its own."""
    from axon.checkpoint import checkpoint_step, resolve_resume, set_aside_later

    starts = []
    try:
        for run in runs:
            record = read_cell(run, fingerprint(exp, run))
            if record is not None and record.get("done"):
                starts.append(CellStart(True, record=record))
                continue
            path = resolve_resume(run.config.out_dir, "latest") if record is not None else None
            if path is None:
                set_aside_later(run.config.out_dir, 0)
                starts.append(CellStart())
                continue
            step = checkpoint_step(path)
            evaluated = tuple(row["epoch"] for row in record.get("rows", []) if row["step"] <= step)
            starts.append(CellStart(False, str(path), evaluated, record))
    except ConfigError as err:
        return [], {"error": str(err)}
    return starts, {"cells": [[s.done, s.checkpoint, list(s.evaluated)] for s in starts]}


def agree_on_resume(runtime, starts: list[CellStart], verdict: dict) -> list[CellStart]:
    """Every rank: rank 0's plan (an error is raised as a ConfigError on every rank)."""
    from axon.runtime.verdict import share_from_rank0

    verdict = share_from_rank0(runtime, "memorize-resume", verdict)
    if "error" in verdict:
        raise ConfigError(verdict["error"])
    if runtime.rank == 0:
        return starts
    return [CellStart(done, checkpoint, tuple(evaluated)) for done, checkpoint, evaluated in verdict["cells"]]
