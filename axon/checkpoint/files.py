"""Where a checkpoint's files are, and which rank writes, checks and removes each.

Format 2 (this axon writes it):

    step_NNNNNNNN/meta.json                       the step, layout, model, tensors (size independent of the world)
    step_NNNNNNNN/ranks_KKKK/rank_RRRRR.safetensors  one per rank at data coordinate 0, K = R // FILES_PER_DIR
    step_NNNNNNNN/ranks_KKKK/files.json           {file name: {bytes, sha256}} of that folder's shard files

Only the ranks at data coordinate 0 write: the other replicas hold the same tensors, and their
RNG states travel in their data-0 peer's file ("rng/torch", one row per data coordinate). No
folder holds more than FILES_PER_DIR shard files, and a rank reading its own shards reads
meta.json and the one or two files.json it needs, never a record of every rank.

Format 1 (read only): every rank's file flat in the folder, every record in meta.json's "files".
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from axon.config import ConfigError
from axon.spec.layout import Layout

FILES_PER_DIR = 1024
INDEX = "files.json"


def writes_shards(layout: Layout, rank: int) -> bool:
    """Rank `rank` writes a shard file: it sits at data coordinate 0."""
    return layout.coords(rank)["data"] == 0


def shard_ranks(layout: Layout) -> list[int]:
    """The ranks whose shard files a format-2 checkpoint of `layout` holds, ascending."""
    return [rank for rank in range(layout.world_size) if writes_shards(layout, rank)]


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.safetensors"


def shard_dir(rank: int) -> str:
    return f"ranks_{rank // FILES_PER_DIR:04d}"


def shard_path(rank: int, fmt: int = 2) -> str:
    """A rank's shard file, relative to the checkpoint folder."""
    return rank_file(rank) if fmt == 1 else f"{shard_dir(rank)}/{rank_file(rank)}"


def rank_of_file(name: str) -> int | None:
    """The rank of a shard file's name, or None for any other name (meta.json and files.json name
    no path outside their folder)."""
    match = re.fullmatch(r"rank_(\d{5,})\.safetensors", name)
    return int(match.group(1)) if match else None


def malformed_records(records) -> str | None:
    """What in a parsed {file name: {bytes, sha256}} map is not what a save writes, or None."""
    if not isinstance(records, dict):
        return f"it holds a {type(records).__name__}, not an object"
    for name, record in records.items():
        if (not isinstance(record, dict) or not isinstance(record.get("bytes"), int)
                or not isinstance(record.get("sha256"), str) or rank_of_file(name) is None):
            return f"files[{name!r}] is {record!r}, not {{bytes, sha256}} of a rank_RRRRR.safetensors file"
    return None


def read_index(folder: Path) -> dict[str, dict]:
    """One shard folder's files.json, checked."""
    path = folder / INDEX
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"checkpoint file {str(path)!r} is missing: not a complete axon checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"checkpoint file {str(path)!r} is corrupt: {err}") from None
    malformed = malformed_records(records)
    if malformed:
        raise ConfigError(f"checkpoint file {str(path)!r} is corrupt: {malformed}")
    return records


def index_texts(records: dict[int, tuple[int, str]]) -> dict[str, bytes]:
    """Each shard folder's files.json, from {rank: (bytes, sha256)} of every shard file."""
    folders: dict[str, dict] = {}
    for rank in sorted(records):
        size, sha256 = records[rank]
        folders.setdefault(shard_dir(rank), {})[rank_file(rank)] = {"bytes": size, "sha256": sha256}
    return {folder: json.dumps(entries, indent=1).encode() for folder, entries in folders.items()}


def pruning_plan(layout: Layout) -> tuple[int, int, int]:
    """What a rank needs to find its share of a pruned checkpoint's files without listing it:
    the world it was written at, and the data axis's size and rank stride there."""
    return layout.world_size, layout.data, layout.strides()["data"]


def remove_own_shards(folder: Path, rank: int, world: int, plan: tuple[int, int, int]) -> int:
    """Unlink the shard files of a checkpoint being pruned that rank `rank` of `world` answers
    for: those of old ranks rank, rank + world, ... that wrote one (data coordinate 0 in the
    `pruning_plan` of the layout it was written at). Returns how many it removed."""
    written_world, data, data_stride = plan
    removed = 0
    for old_rank in range(rank, written_world, world):
        if (old_rank // data_stride) % data:
            continue
        try:
            os.unlink(folder / shard_path(old_rank))
            removed += 1
        except FileNotFoundError:  # already gone: a prune killed half-way and run again
            pass
    return removed


def recorded_bytes(checkpoint: Path) -> int:
    """A format-2 checkpoint's size on disk: its shard files as files.json records them (one read
    per folder, not a stat per file) and its metadata."""
    folders = sorted(Path(checkpoint).glob("ranks_*"))
    shards = sum(record["bytes"] for folder in folders for record in read_index(folder).values())
    return shards + sum(f.stat().st_size for f in [Path(checkpoint) / "meta.json", *(d / INDEX for d in folders)])
