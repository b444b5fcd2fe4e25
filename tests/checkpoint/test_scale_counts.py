"""A save and a load cost each rank the same file operations at any world size (issue 32):
counted at 4 and 8 ranks (data 2 x depth 2, then x col 2), per rank, with the file system's own audit
events. Rank 0 alone does work that grows with the number of shard files (their records and
the completeness check), and data replicas read nothing from storage but their share of hashing."""

from __future__ import annotations

import pytest
import torch

from axon import checkpoint
from axon.checkpoint.files import recorded_bytes
from axon.checkpoint.reader import CheckpointReader
from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.testing.file_ops import FileOps
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": 64, "seq_len": 8}
LAYOUTS = {4: Layout(data=2, depth=2), 8: Layout(data=2, depth=2, col=2)}


def save_twice_and_load(rank, world, out_dir):
    """Train 2 steps, save as steps 1 and 2 keeping 1 (the second save prunes the first), then
    load the second in a fresh trainer; every rank's file operations, and rank 0's completeness check."""
    config = build_config({"model": MODEL, "layout": vars(LAYOUTS[world]) | {"order": list(LAYOUTS[world].order)},
                           "out_dir": str(out_dir), "train": {"steps": 2, "global_batch": 4, "lr": 1e-3, "seed": 3}})
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    trainer.fit()
    counts = {}
    for step in (1, 2):
        with FileOps(out_dir) as ops:
            path = checkpoint.save(trainer, step, keep=1)
        counts[f"save {step}"] = dict(ops.counts)
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    fresh = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    with FileOps(out_dir) as ops:
        reader = CheckpointReader(path)
        fresh.resume_from(reader)
    counts["load"] = dict(ops.counts)
    same = all(torch.equal(p, params[name]) for name, p in fresh.model.named_parameters())
    checked = None
    if rank == 0:
        with FileOps(out_dir) as ops:
            CheckpointReader(path).check_files()
        checked = dict(ops.counts)
    trainer.grid.destroy()
    fresh.grid.destroy()
    folders = sorted(p.name for p in path.parent.iterdir())
    shard_bytes = [f.stat().st_size for f in sorted(path.glob("ranks_*/rank_*.safetensors"))]
    sizes = (recorded_bytes(path), sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
    return {"sizes": sizes, "counts": counts, "bytes_read": reader.bytes_read, "tensor_files": sorted(reader.files_read),
            "same": same, "checked": checked, "folders": folders, "shard_bytes": shard_bytes}


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    return {world: run_distributed(world, save_twice_and_load, tmp_path_factory.mktemp(f"world{world}"))
            for world in LAYOUTS}


def test_every_rank_loads_what_it_saved_and_the_first_save_is_pruned(counted):
    for world, results in counted.items():
        assert all(r["same"] for r in results), world
        assert results[0]["folders"] == ["step_00000002"], world
        recorded, on_disk = results[0]["sizes"]  # what the save's log line reports, from files.json
        assert recorded == on_disk, world


def test_a_rank_other_than_0_makes_the_same_file_operations_at_any_world_size(counted):
    def worst(results, phase):  # the most any rank but 0 makes, per kind of operation
        kinds = {k for r in results[1:] for k in r["counts"][phase]}
        return {k: max(r["counts"][phase].get(k, 0) for r in results[1:]) for k in kinds}

    for phase in ("save 1", "save 2", "load"):
        per_world = {world: worst(results, phase) for world, results in counted.items()}
        assert per_world[4] == per_world[8], (phase, per_world)
    # A writer: one shard file written, nothing renamed, statted or listed; the second save also
    # unlinks its own file of the first. A load: meta.json, one files.json, one file hashed.
    assert worst(counted[8], "save 1") == {"open_write": 1}
    assert worst(counted[8], "save 2") == {"open_write": 1, "unlink": 1}
    assert worst(counted[8], "load") == {"stat": 1, "open": 3}
    for world in (4, 8):  # data replicas (the upper half: data is the outermost axis) write nothing
        assert all(not r["counts"]["save 1"] for r in counted[world][world // 2:]), world


def test_rank_0_alone_does_work_that_grows_with_the_shard_files(counted):
    for world, results in counted.items():
        files = world // LAYOUTS[world].data  # the data-0 ranks write
        assert results[0]["checked"] == {"stat": 1 + files, "open": 2}  # meta.json, files.json
        save = results[0]["counts"]["save 2"]
        assert save["rename"] == 2 and save["open_write"] == 3  # partial -> final, old -> pruned; shard, index, meta


def test_storage_serves_each_byte_once_per_load(counted):
    for world in (4, 8):
        results = counted[world]
        replicas = results[world // 2:]  # data coordinate 1: their tensors come by broadcast
        assert all(r["tensor_files"] == [] for r in replicas), world
        shard_bytes = results[0]["shard_bytes"]
        assert len(shard_bytes) == world // 2
        # Each shard byte is hashed once in all and read at most once more (by its data-0 rank);
        # a replica reads only the file it hashes.
        assert sum(r["bytes_read"] for r in results) <= 2 * sum(shard_bytes), world
        assert all(r["bytes_read"] <= max(shard_bytes) for r in replicas), world
