"""Write an axon checkpoint: each rank its own shards, rank 0 the metadata, atomically.

Layout on disk: OUT_DIR/checkpoints/step_NNNNNNNN/{meta.json, rank_RRRRR.safetensors}.
Everything goes into `step_NNNNNNNN.partial/` first; files are fsynced, and only once
every rank has written does rank 0 add meta.json and rename the directory, so a kill
mid-save leaves the previous checkpoint as the newest loadable one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from axon.checkpoint.reader import FORMAT_VERSION, META, rank_file
from axon.parallel.comm import gather_objects, world_barrier
from axon.parallel.sharding import named_shardings
from perfmodel.layout import AXES


def _owns(sharding, grid) -> bool:
    """One rank writes each distinct shard: coordinate 0 on every axis that replicates it.
    (Pipe never replicates: each stage holds different layers.)"""
    replicated = {"data"} | ({"row", "col"} - set(sharding.dim_axes))
    if not sharding.depth_sharded:
        replicated.add("depth")
    return all(grid.coord(axis) == 0 for axis in replicated)


def _rank_tensors(model, optimizer, grid) -> dict[str, torch.Tensor]:
    tensors = {"rng/torch": torch.get_rng_state()}
    for name, param, sharding in named_shardings(model):
        if not _owns(sharding, grid):
            continue
        tensors[f"model/{name}"] = param.detach().cpu().contiguous()
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}/{name}"] = state[key].detach().cpu().contiguous()
    return tensors


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(final: Path, model, optimizer, grid, shape, step: int, extra: dict) -> Path:
    """Collective: every rank of the grid calls it. Returns the checkpoint directory."""
    final = Path(final)
    partial = final.parent / (final.name + ".partial")
    if grid.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    world_barrier()
    blob = safetensors_bytes(_rank_tensors(model, optimizer, grid))
    _write_durably(partial / rank_file(grid.rank), blob)
    # Each stage describes its own layers; "stage" tells a reader whose files hold them.
    stage = grid.coord("pipe")
    tensors = {name: {"global_shape": list(s.global_shape), "dim_axes": list(s.dim_axes),
                      "depth_sharded": s.depth_sharded, "stage": stage} for name, _, s in named_shardings(model)}
    records = gather_objects(({rank_file(grid.rank): {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}},
                              tensors if all(grid.coord(a) == 0 for a in AXES if a != "pipe") else {}))
    if grid.rank == 0:
        adam_steps = [s["step"].item() for s in optimizer.state.values() if "step" in s] if optimizer else []
        layout = {axis: grid.size(axis) for axis in AXES}
        layout["order"] = list(grid.layout.order)
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "layout": layout,
            "model": vars(shape).copy(),
            "tensors": {name: info for _, part in records for name, info in part.items()},
            "optimizer_step": adam_steps[0] if adam_steps else 0.0,
            "files": {name: record for files, _ in records for name, record in files.items()},
            **extra,
        }
        _write_durably(partial / META, json.dumps(meta, indent=1).encode())
        _fsync_dir(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(final.parent)
    world_barrier()
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (rank 0 only); leftovers of killed saves go too."""
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for partial in root.glob("step_*.partial"):
        if partial.stat().st_mtime < max((p.stat().st_mtime for p in done), default=0):
            shutil.rmtree(partial, ignore_errors=True)
