"""The JSON file that keeps GEMM tuning choices across restarts.

One object: {"format": FORMAT, "entries": {key: {"best": name, "candidates": {name: seconds}}}}.
Keys name the torch version, the device, the dtype, the shape and the operand layouts, so
one file can serve several machines and torch versions without mixing their choices.
Several ranks may share the file: a write merges what is on disk with this process's
entries and replaces the file atomically, fsynced as checkpoints are, so no rank (and no
crash) leaves a half-written file. Two writes that race can drop the other's newest entries
from the file until that rank writes again; the cost is a key timed once more after a
restart, never a wrong choice (when two ranks time the same key, the last writer's choice
stays: either is a measured choice for that key).
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
    """Tuning choices loaded from `path` at start and written back after each new entry
    (path None: kept in memory only)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.entries = {} if self.path is None else read_entries(self.path)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        if self.path is None:
            return
        merged = {**read_entries(self.path), **self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f"{self.path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        with open(temporary, "w") as f:
            f.write(json.dumps({"format": FORMAT, "entries": merged}, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename, so a crash cannot leave an empty file
        os.replace(temporary, self.path)  # atomic: readers see the old file or the new one
        _fsync_dir(self.path.parent)


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
