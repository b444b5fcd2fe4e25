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
import struct
from pathlib import Path

import torch

from axon.checkpoint.reader import FORMAT_VERSION, META, complete_checkpoints, rank_file
from axon.parallel.comm import gather_objects_to_rank0, gather_to_rank0, world_barrier
from axon.parallel.sharding import named_shardings
from axon.spec.layout import AXES

# A device tensor reaches the host this many bytes at a time, so a save needs about this
# much extra host memory whatever the size of the rank's shards (CPU tensors are not copied).
COPY_BYTES = 64 * 2**20
# The safetensors names of the dtypes a checkpoint holds (training state and the RNG's bytes).
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def _owns(sharding, grid) -> bool:
    """One rank writes each distinct shard: coordinate 0 on every axis that replicates it.
    (Pipe never replicates: each stage holds different layers.)"""
    replicated = {"data"} | ({"row", "col"} - set(sharding.dim_axes))
    if not sharding.depth_sharded:
        replicated.add("depth")
    return all(grid.coord(axis) == 0 for axis in replicated)


def _rank_tensors(model, optimizer, grid) -> dict[str, torch.Tensor]:
    """What this rank writes, left where it lives (the writer copies slices to the host)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    for name, param, sharding in named_shardings(model):
        if not _owns(sharding, grid):
            continue
        tensors[f"model/{name}"] = param.detach()
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}/{name}"] = state[key].detach()
    return tensors


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[int, str]:
    """Write `tensors` as a safetensors file, streamed: the header, then each tensor's bytes
    COPY_BYTES at a time, hashed as they are written; fsynced. Returns (file bytes, sha256).

    The format: an 8-byte little-endian header length, a JSON header giving each tensor's
    dtype, shape and byte range in the data, padded with spaces so the data starts at a
    multiple of 8, then the raw little-endian bytes. safetensors' own save_file would first
    copy every device tensor to the host and keep them all."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for piece in _pieces(struct.pack("<Q", len(text)) + text, tensors.values()):
            f.write(piece)
            digest.update(piece)
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(text) + offset, digest.hexdigest()


def _pieces(head: bytes, tensors):
    """The file's bytes in order: the header, then host copies of at most COPY_BYTES of each tensor."""
    yield head
    for tensor in tensors:
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        for start in range(0, flat.numel(), COPY_BYTES):
            yield memoryview(flat[start:start + COPY_BYTES].cpu().numpy())


def _file_record(size: int, sha256: str, device) -> torch.Tensor:
    """A file's size and digest as 40 bytes, so rank 0 can gather every rank's as one fixed-size tensor."""
    return torch.frombuffer(bytearray(struct.pack("<Q", size) + bytes.fromhex(sha256)), dtype=torch.uint8).to(device)


def _read_file_record(record: torch.Tensor) -> dict:
    raw = record.cpu().numpy().tobytes()
    return {"bytes": struct.unpack("<Q", raw[:8])[0], "sha256": raw[8:].hex()}


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
    size, sha256 = write_safetensors(partial / rank_file(grid.rank), _rank_tensors(model, optimizer, grid))
    faults = grid.trace.flight  # AXON_FAULT's save points (a testing aid; benchmarks/faults.py)
    faults.save_point(step, "shards")
    # Only rank 0 writes meta.json, so only rank 0 receives: 40 bytes from every rank, and
    # from each stage's first rank (the pipe group that holds rank 0) that stage's tensors.
    device = next(model.parameters()).device
    records = gather_to_rank0(_file_record(size, sha256, device))
    if all(grid.coord(a) == 0 for a in AXES if a != "pipe"):
        stage = grid.coord("pipe")  # "stage" tells a reader whose files hold a layer
        tensors = {name: {"global_shape": list(s.global_shape), "dim_axes": list(s.dim_axes),
                          "depth_sharded": s.depth_sharded, "stage": stage} for name, _, s in named_shardings(model)}
        stages = gather_objects_to_rank0(tensors, grid.group("pipe"))
    if grid.rank == 0:
        # Every parameter's AdamW has taken the same steps: read one (on a GPU a fused AdamW's is on the device).
        adam_step = next((s["step"].item() for s in optimizer.state.values() if "step" in s), 0.0) if optimizer else 0.0
        layout = {axis: grid.size(axis) for axis in AXES}
        layout["order"] = list(grid.layout.order)
        layout["virtual_stages"] = grid.layout.virtual_stages  # which chunks a stage holds; readers use "stage"
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "layout": layout,
            "model": vars(shape).copy(),
            "tensors": {name: info for part in stages for name, info in part.items()},
            "optimizer_step": adam_step,
            "files": {rank_file(rank): _read_file_record(record) for rank, record in enumerate(records)},
            **extra,
        }
        _write_durably(partial / META, json.dumps(meta, indent=1).encode())
        _fsync_dir(partial)
        faults.save_point(step, "meta")
        replaced = final.parent / (final.name + ".replaced")
        if final.exists():  # a re-save of this step: the old copy stays whole until the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(partial, final)
        _fsync_dir(final.parent)
        shutil.rmtree(replaced, ignore_errors=True)
        faults.save_point(step, "renamed")
    world_barrier()
    return final


def prune_checkpoints(root: Path, keep: int, spare: tuple[Path | None, ...] = (), after_each=None) -> None:
    """Keep the newest `keep` complete checkpoints (rank 0 only) and every one in `spare` (the
    one just written, the one the run resumed from); a folder without meta.json is not a
    checkpoint and is neither counted nor removed. Leftovers of killed saves and prunes go too.

    A checkpoint is first renamed to step_N.pruned (one atomic step: from then on no reader
    takes it), then removed, so a prune killed half-way never leaves half a checkpoint under
    its name. `after_each()` runs after each removal (fault injection)."""
    done = complete_checkpoints(root)
    spared = {p.resolve() for p in spare if p is not None}
    for old in done[:-keep] if keep > 0 else []:
        if old.resolve() not in spared:
            doomed = old.with_name(old.name + ".pruned")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            if after_each is not None:
                after_each()
    for leftover in root.glob("step_*.pruned"):
        shutil.rmtree(leftover, ignore_errors=True)
    for partial in root.glob("step_*.partial"):
        if partial.stat().st_mtime < max((p.stat().st_mtime for p in done), default=0):
            shutil.rmtree(partial, ignore_errors=True)
