"""The JSON file that keeps GEMM tuning choices across restarts.

One object: {"format": FORMAT, "entries": {key: {"best": name, "candidates": {name: seconds}}}}.
Keys name the torch version, the device, the dtype, the shape and the operand layouts, so
one file can serve several machines and torch versions without mixing their choices.
Every rank reads the file once at start (one read per rank, however large the world). A
new choice is only recorded in memory; `flush` merges what is on disk with this process's
entries and replaces the file atomically, fsynced as checkpoints are, so no crash leaves a
half-written file. In a training run one rank per pipeline stage flushes (`stage_writer`),
after the first step and at the end: every rank of a stage runs the same local GEMM shapes,
so the others' keys are the writer's keys, and the directory sees O(stages) renames instead
of one per rank per key. Writers of different stages (or of jobs sharing the file) that
race can drop the other's newest entries until it flushes again; the cost is a key timed
once more after a restart, never a wrong choice (when two writers time the same key, the
last one's choice stays: either is a measured choice for that key).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

FORMAT = "axon-gemm-tuning/1"


def read_entries(path: Path) -> dict[str, dict]:
    """The entries of the cache at `path` ({} when there is no file yet)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"GEMM tuning cache {path} is not valid JSON ({error}); delete it to tune again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"GEMM tuning cache {path} is not a {FORMAT} file; delete it or give another path")
    return data["entries"]


class GemmCache:
    """Tuning choices loaded from `path` at start; `put` records new ones in memory and
    `flush` writes them (path None: kept in memory only; `writer` False: the file is read,
    never written)."""

    def __init__(self, path: str | os.PathLike | None, writer: bool = True):
        self.path = None if path is None else Path(path)
        self.writer = writer and self.path is not None
        self.entries = {} if self.path is None else read_entries(self.path)
        self.unwritten: set[str] = set()  # keys put since the last flush

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        self.unwritten.add(key)

    def flush(self) -> bool:
        """Merge this process's entries into the file and replace it atomically, if this is a
        writer with entries not yet written; whether it wrote."""
        if not (self.writer and self.unwritten):
            return False
        merged = {**read_entries(self.path), **self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        with open(temporary, "w") as f:
            f.write(json.dumps({"format": FORMAT, "entries": merged}, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename, so a crash cannot leave an empty file
        os.replace(temporary, self.path)  # atomic: readers see the old file or the new one
        _fsync_dir(self.path.parent)
        self.unwritten.clear()
        return True


def stage_writer(grid) -> bool:
    """Whether this rank writes the cache for its pipeline stage: the one whose coordinates on
    every other axis are 0. Data and depth split the batch and row and col split the weights
    evenly, so every rank of a stage times the same local GEMM shapes; stages differ (the
    embedding and head, their blocks), so each has its own writer."""
    return all(grid.coord(axis) == 0 for axis in ("data", "depth", "row", "col"))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
