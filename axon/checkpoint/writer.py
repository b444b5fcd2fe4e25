"""Write an axon checkpoint: the ranks at data coordinate 0 their shards, rank 0 the metadata, atomically.

Layout on disk: axon/checkpoint/files.py. Everything goes into `step_NNNNNNNN.partial/` first;
files are fsynced, and only once every rank has written does rank 0 add the files.json
records and meta.json and rename the directory, so a kill mid-save leaves the previous
checkpoint as the newest loadable one.

At any world size a rank writes at most one file, and rank 0 learns every file's size and
sha256 through one all-gather of fixed 40-byte records. The save's barriers run on the grid's
checkpoint axis, whose long timeout lets a slow file system finish and whose collectives the
watchdog sees (axon.parallel.grid).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import torch

from axon.checkpoint.files import (INDEX, index_texts, pruning_plan, remove_own_shards, shard_dir, shard_path, shard_ranks,
                                   writes_shards)
from axon.checkpoint.reader import FORMAT_VERSION, META, CheckpointReader, complete_checkpoints
from axon.parallel.comm import all_gather_flat, barrier, broadcast, gather_objects_to_rank0
from axon.parallel.sharding import named_shardings
from axon.spec.layout import AXES

# A device tensor reaches the host this many bytes at a time, so a save needs about this
# much extra host memory whatever the size of the rank's shards (CPU tensors are not copied).
COPY_BYTES = 64 * 2**20
# A prune removes at most this many checkpoints at once (the rest at the next save): a fixed-size broadcast.
MAX_PRUNED_AT_ONCE = 8
# The safetensors names of the dtypes a checkpoint holds (training state and the RNG's bytes).
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def owner(sharding, grid) -> int:
    """The rank that writes this rank's shard of a tensor: coordinate 0 on every axis that
    replicates it (pipe never replicates: each stage holds different layers)."""
    replicated = {"data"} | ({"row", "col"} - set(sharding.dim_axes))
    if not sharding.depth_sharded:
        replicated.add("depth")
    return grid.layout.rank_of({**grid.coords, **{axis: 0 for axis in replicated}})


def _rank_tensors(model, optimizer, grid, device) -> dict[str, torch.Tensor]:
    """What this rank writes, left where it lives (the writer copies slices to the host): the
    shards it owns and the RNG states of its data group, one row per data coordinate."""
    tensors = {"rng/torch": _data_group_rng_states(grid, device)}
    for name, param, sharding in named_shardings(model):
        if owner(sharding, grid) != grid.rank:
            continue
        tensors[f"model/{name}"] = param.detach()
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}/{name}"] = state[key].detach()
    return tensors


def _data_group_rng_states(grid, device) -> torch.Tensor:
    """Every data replica's torch RNG state, [data, state bytes] (collective over the data axis,
    on the device: NCCL moves no host tensor)."""
    state = torch.get_rng_state()
    axis = grid.axis("data")
    if axis.group is None:
        return state.view(1, -1)
    return all_gather_flat(state.to(device), axis).view(axis.size, -1)


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
    """A file's size and digest as 40 bytes (all zero: no file), so rank 0 gathers every rank's
    as one fixed-size tensor."""
    raw = struct.pack("<Q", size) + bytes.fromhex(sha256) if size else bytes(40)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(device)


def _read_file_records(records: torch.Tensor, ranks: list[int]) -> dict[int, tuple[int, str]]:
    """{rank: (bytes, sha256)} of the shard-writing `ranks`, from every rank's 40-byte record."""
    raw = records.cpu().numpy().tobytes()
    return {rank: (struct.unpack("<Q", raw[40 * rank:40 * rank + 8])[0], raw[40 * rank + 8:40 * rank + 40].hex())
            for rank in ranks}


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
    writers = shard_ranks(grid.layout) if grid.rank == 0 else None  # only rank 0 makes folders and records
    faults = grid.trace.flight  # AXON_FAULT's save points (a testing aid; benchmarks/faults.py)
    device = next(model.parameters()).device
    if grid.rank == 0:  # one mkdir per FILES_PER_DIR writers, all here: no rank races another's
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for folder in dict.fromkeys(shard_dir(rank) for rank in writers):
            (partial / folder).mkdir()
    checkpoint = grid.axis("checkpoint")
    barrier(checkpoint)
    tensors = _rank_tensors(model, optimizer, grid, device)  # every rank: the RNG states' all-gather
    size = sha256 = 0
    if writes_shards(grid.layout, grid.rank):
        size, sha256 = write_safetensors(partial / shard_path(grid.rank), tensors)
    faults.save_point(step, "shards")
    # One all-gather of 40 bytes per rank: rank 0 needs every record; a gather would make it
    # receive from each rank separately (one connection per rank on NCCL).
    records = all_gather_flat(_file_record(size, sha256, device), checkpoint)
    if all(grid.coord(a) == 0 for a in AXES if a != "pipe"):
        stage = grid.coord("pipe")  # "stage" tells a reader whose files hold a layer
        described = {name: {"global_shape": list(s.global_shape), "dim_axes": list(s.dim_axes),
                            "depth_sharded": s.depth_sharded, "stage": stage} for name, _, s in named_shardings(model)}
        stages = gather_objects_to_rank0(described, grid.group("pipe"))  # pipe-many stages, not the world
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
            **extra,
        }
        for folder, text in index_texts(_read_file_records(records, writers)).items():
            _write_durably(partial / folder / INDEX, text)
            _fsync_dir(partial / folder)
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
    barrier(checkpoint)
    return final


def doomed_checkpoints(root: Path, keep: int, spare: tuple[Path | None, ...] = ()) -> list[Path]:
    """The complete checkpoints a prune removes: all but the newest `keep` and those in `spare`
    (the one just written, the one the run resumed from); a folder without meta.json is not a
    checkpoint and is neither counted nor removed."""
    done = complete_checkpoints(root)
    spared = {p.resolve() for p in spare if p is not None}
    return [old for old in (done[:-keep] if keep > 0 else []) if old.resolve() not in spared]


def prune_checkpoints(root: Path, keep: int, spare: tuple[Path | None, ...] = (), after_each=None) -> None:
    """One process: `doomed_checkpoints` removed, then leftovers of killed saves and prunes."""
    doomed = _set_aside(doomed_checkpoints(root, keep, spare))
    _remove(root, [folder for folder, _ in doomed], after_each)


def prune_together(root: Path, keep: int, spare: tuple[Path | None, ...], grid, device, after_each=None) -> None:
    """Collective: prune as `prune_checkpoints` does, each rank unlinking its own share of the
    shard files (rank 0 then removes what is left: metadata and empty folders), so no rank
    removes files in proportion to the world. Rank 0 decides and tells the others the pruned
    checkpoints' steps and layouts in one broadcast of MAX_PRUNED_AT_ONCE x 5 numbers."""
    checkpoint = grid.axis("checkpoint")
    plan = torch.full((MAX_PRUNED_AT_ONCE, 5), -1, dtype=torch.int64)
    doomed = []
    if grid.rank == 0:
        doomed = _set_aside(doomed_checkpoints(root, keep, spare)[:MAX_PRUNED_AT_ONCE])
        for row, (_, numbers) in enumerate(doomed):
            plan[row] = torch.tensor(numbers)
    if checkpoint.group is not None:
        plan = broadcast(plan.to(device), checkpoint, src=0).cpu()  # device memory: NCCL moves no host tensor
    for step, written_world, data, data_stride, fmt in plan.tolist():
        if step >= 0 and fmt == 2:
            folder = root / f"step_{step:08d}.pruned"
            remove_own_shards(folder, grid.rank, grid.layout.world_size,
                                             (written_world, data, data_stride)) > 0
    if (plan[:, 0] >= 0).any() and checkpoint.group is not None:
        barrier(checkpoint)  # every rank's share is gone before rank 0 removes the folders
    if grid.rank == 0:
        _remove(root, [folder for folder, _ in doomed], after_each)


def _set_aside(doomed: list[Path]) -> list[tuple[Path, tuple[int, ...]]]:
    """Rename each doomed checkpoint to step_N.pruned (one atomic step: from then on no reader
    takes it); returns each new folder and (step, world, data, data stride, format) of it."""
    aside = []
    for old in doomed:
        try:
            reader = CheckpointReader(old)
            numbers = (reader.step, *pruning_plan(reader.layout), reader.format)
        except Exception:  # noqa: BLE001 (unreadable metadata: rank 0 removes the whole folder itself)
            numbers = (int(old.name[5:]), 0, 1, 1, 0)
        doomed_folder = old.with_name(old.name + ".pruned")
        os.replace(old, doomed_folder)
        aside.append((doomed_folder, numbers))
    return aside


def _remove(root: Path, folders: list[Path], after_each=None) -> None:
    """Rank 0: remove pruned folders, then leftovers of killed saves and prunes."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        if after_each is not None:
            after_each()
    for leftover in root.glob("step_*.pruned"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = complete_checkpoints(root)
    for partial in root.glob("step_*.partial"):
        if partial.stat().st_mtime < max((p.stat().st_mtime for p in done), default=0):
            shutil.rmtree(partial, ignore_errors=True)
