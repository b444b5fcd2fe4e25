"""Checkpoints that survive preemption and reshard to any layout.

`save` / `load` for training state (model, AdamW state, RNG, step, data position);
`write_model_checkpoint` / `read_full_model` for conversion tools (one process).
reader.py and writer.py hold the file format; huggingface.py maps Hugging Face Llama weights
and configs to axon's; convert.py is `python -m axon convert` between the two.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from axon.checkpoint.reader import (CheckpointReader, CorruptCheckpoint, checkpoint_step, find_latest,
                                    find_latest_intact)
from axon.checkpoint.writer import owner, prune_together, write_checkpoint
from axon.config import ConfigError
from axon.parallel.comm import broadcast
from axon.parallel.sharding import named_shardings, shard_from_global

__all__ = ["CheckpointReader", "CorruptCheckpoint", "checkpoint_root", "find_latest_intact", "find_latest", "load", "read_full_model",
           "resolve_resume", "save", "set_aside_later", "write_model_checkpoint"]


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def resolve_resume(out_dir: str, resume: str, passed_over: list[str] | None = None) -> Path | None:
    """train.resume: "" (start fresh), "latest" (the newest checkpoint that reads whole, if any;
    why each newer one was passed over is appended to `passed_over`) or a path."""
    if not resume:
        return None
    if resume == "latest":
        path, skipped = find_latest_intact(checkpoint_root(out_dir))
        if passed_over is not None:
            passed_over.extend(skipped)
        return path
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"train.resume={resume!r} is not a checkpoint directory")
    return path


def save(trainer, step: int, keep: int) -> Path:
    """Collective. Checkpoint the trainer after `step` completed steps."""
    final = checkpoint_root(trainer.config.out_dir) / f"step_{step:08d}"
    extra = {"next_sequence": trainer.next_sequence(step), "data": trainer.data_identity(),
             "config": trainer.config.to_dict()}
    path = write_checkpoint(final, trainer.model, trainer.optimizer, trainer.grid, trainer.config.model, step, extra)
    prune_together(final.parent, keep, (path, trainer.resumed_from), trainer.grid, trainer.device,
                   after_each=lambda: trainer.grid.trace.flight.save_point(step, "prune"))
    return path


def set_aside_later(out_dir: str | Path, step: int) -> tuple[Path, list[str]] | None:
    """A run resumed by name from `step` abandons the checkpoints its directory holds of later
    steps: move them (and killed saves of later steps) into OUT_DIR/checkpoints/abandoned-<time>/,
    never deleting, so that `latest` and pruning follow the resumed run. Rank 0, before training.
    Returns the folder and the names moved, or None when there were none."""
    root = checkpoint_root(out_dir)
    later = sorted(p for p in root.glob("step_*") if p.is_dir() and (checkpoint_step(p) or 0) > step)
    if not later:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = root / f"abandoned-{stamp}", 1
    while folder.exists():  # two rollbacks in one second
        n += 1
        folder = root / f"abandoned-{stamp}-{n}"
    folder.mkdir()
    for path in later:
        path.rename(folder / path.name)
    return folder, [p.name for p in later]


@torch.no_grad()
def load_shards(reader: CheckpointReader, model, optimizer, grid) -> None:
    """Fill this rank's parameters (and AdamW state) from a checkpoint of any layout.

    Only the ranks at data coordinate 0 read the files; each tensor then reaches the other data
    replicas by a broadcast over the data axis, on the device, so storage serves each byte once.
    At the layout it was saved at, a rank reads its shard whole from the one file that holds it;
    at another, the slices of the saved shards that make it up."""
    data = grid.axis("data")
    reads = grid.coord("data") == 0
    source = grid.layout.rank_of({**grid.coords, "data": 0})
    same_layout = reader.layout == grid.layout
    for name, param, sharding in named_shardings(model):
        if name not in reader.tensors or tuple(reader.tensors[name]["global_shape"]) != sharding.global_shape:
            raise ConfigError(f"checkpoint {str(reader.path)!r} has no tensor {name} of shape {sharding.global_shape}")

        def fill(target, key):
            if reads and same_layout:
                target.copy_(reader.shard(owner(sharding, grid), f"{key}/{name}").view_as(target))
            elif reads:
                target.copy_(shard_from_global(sharding, grid, lambda r, c: reader.region(key, name, r, c),
                                               param.numel()).to(param.device))
            if data.group is not None:
                broadcast(target, data, source)
            return target

        fill(param.data, "model")
        if optimizer is not None and reader.meta["optimizer_step"] > 0:
            # The fused (GPU) AdamW keeps its step count on the parameters' device, the others on the host.
            step_device = param.device if optimizer.defaults.get("fused") else "cpu"
            optimizer.state[param] = {
                "step": torch.tensor(float(reader.meta["optimizer_step"]), dtype=torch.float32, device=step_device),
                "exp_avg": fill(torch.empty_like(param, memory_format=torch.contiguous_format), "exp_avg"),
                "exp_avg_sq": fill(torch.empty_like(param, memory_format=torch.contiguous_format), "exp_avg_sq"),
            }


def _restore_rng_state(reader: CheckpointReader, grid, device) -> None:
    """This rank's torch RNG state as saved (same layout only: RNG streams belong to ranks).
    Format 2 keeps a data group's states in its data-0 rank's file: that rank reads them and
    the data axis broadcasts them."""
    if reader.format == 1:
        torch.set_rng_state(reader.rng_states(grid.rank)[0].clone())
        return
    data = grid.axis("data")
    source = grid.layout.rank_of({**grid.coords, "data": 0})
    states = torch.empty(grid.size("data"), torch.get_rng_state().numel(), dtype=torch.uint8, device=device)
    if grid.coord("data") == 0:
        states.copy_(reader.rng_states(grid.rank))
    if data.group is not None:
        broadcast(states, data, source)  # on the device: NCCL moves no host tensor
    torch.set_rng_state(states[grid.coord("data")].cpu().clone())  # its own storage: set_rng_state reads from offset 0


def load(trainer, reader: CheckpointReader) -> None:
    """Collective. Verify the shard files (each hashed by one rank), then fill this rank's state."""
    reader.verify(trainer.grid.rank, trainer.grid.layout.world_size, trainer.device)
    load_shards(reader, trainer.model, trainer.optimizer, trainer.grid)
    if reader.layout == trainer.grid.layout:
        _restore_rng_state(reader, trainer.grid, trainer.device)


def write_model_checkpoint(ckpt_dir: str | Path, model, grid, shape) -> None:
    """A step-0 checkpoint holding only the model (conversion tools; one process)."""
    write_checkpoint(Path(ckpt_dir), model, None, grid, shape, step=0, extra={"next_sequence": 0})


def read_full_model(ckpt_dir: str | Path):
    """(ModelShape, {name: full tensor}) from a checkpoint, without torch.distributed."""
    reader = CheckpointReader(ckpt_dir)
    reader.check_files()
    reader.verify()  # one process: it hashes every file itself
    return reader.shape, {name: reader.full("model", name) for name in reader.tensors}
