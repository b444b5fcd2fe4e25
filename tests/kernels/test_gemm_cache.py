"""The GEMM tuning cache file: put records in memory, flush writes valid JSON once (fsynced before
and after the rename) merged with what is on disk, and a training run has one writer per stage."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from axon.config import build_config
from axon.kernels import gemm_cache
from axon.kernels.gemm_cache import FORMAT, GemmCache, stage_writer
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.testing.grids import CoordinateGrid

ENTRY = {"best": "TN", "candidates": {"NN": 2.0e-5, "TN": 1.5e-5}}
OTHER = {"best": "NN", "candidates": {"NN": 1.0e-5}}


@pytest.fixture
def replaces(monkeypatch):
    """The destinations of every os.replace the cache makes (each is one write of the file)."""
    seen = []
    real = os.replace

    def replace(source, destination):
        seen.append(str(destination))
        real(source, destination)

    monkeypatch.setattr(gemm_cache.os, "replace", replace)
    return seen


def test_flush_writes_valid_json_fsynced_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "tuning" / "gemm.json"
    synced = []  # (what was fsynced, whether the cache file existed yet)

    def fsync(fd):
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, path.exists()))

    monkeypatch.setattr(gemm_cache.os, "fsync", fsync)
    cache = GemmCache(path)
    cache.put("k1", ENTRY)
    assert cache.flush()
    assert synced == [("file", False), ("directory", True)]  # the data before the rename, the rename after
    assert json.loads(path.read_text()) == {"format": FORMAT, "entries": {"k1": ENTRY}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemm.json"]  # no temporary file left
    assert GemmCache(path).get("k1") == ENTRY


def test_put_stays_in_memory_and_flush_writes_once(tmp_path, replaces):
    path = tmp_path / "gemm.json"
    cache = GemmCache(path)
    cache.put("k1", ENTRY)
    cache.put("k2", OTHER)
    assert replaces == [] and not path.exists() and cache.get("k2") == OTHER
    assert cache.flush() and replaces == [str(path)]  # both keys, one write
    assert json.loads(path.read_text())["entries"] == {"k1": ENTRY, "k2": OTHER}
    assert not cache.flush() and replaces == [str(path)]  # nothing new: nothing written
    cache.put("k3", ENTRY)
    assert cache.flush() and len(replaces) == 2

    reader = GemmCache(path, writer=False)  # a rank that is not its stage's writer
    assert reader.get("k3") == ENTRY  # still loads the file
    reader.put("k4", OTHER)
    assert not reader.flush() and len(replaces) == 2 and "k4" not in json.loads(path.read_text())["entries"]
    memory = GemmCache(None)
    memory.put("k1", ENTRY)
    assert not memory.flush() and len(replaces) == 2


def test_flush_merges_what_another_process_wrote_meanwhile(tmp_path):
    path = tmp_path / "gemm.json"
    ours, theirs = GemmCache(path), GemmCache(path)  # both loaded the (absent) file at start
    ours.put("k1", ENTRY)
    theirs.put("k2", OTHER)
    assert theirs.flush()
    assert ours.flush()  # reads the file theirs wrote after we loaded it, keeps its entry
    assert json.loads(path.read_text())["entries"] == {"k1": ENTRY, "k2": OTHER}


def test_one_writer_per_pipeline_stage():
    for order in [("data", "pipe", "depth", "row", "col"), ("pipe", "col", "data", "depth", "row")]:
        layout = Layout(data=2, pipe=2, col=2, order=order)
        # Independently of stage_writer: walk the rank order (the last axis varies fastest) and keep
        # the ranks whose data and col digits are 0.
        sizes = [getattr(layout, axis) for axis in order]
        expected = []
        for rank in range(layout.world_size):
            digits, rest = {}, rank
            for axis, size in zip(reversed(order), reversed(sizes)):
                digits[axis], rest = rest % size, rest // size
            if digits["data"] == 0 and digits["col"] == 0:
                expected.append(rank)
        writers = [rank for rank in range(layout.world_size) if stage_writer(CoordinateGrid(layout, rank))]
        assert writers == expected and len(writers) == 2, order
        assert sorted(layout.coords(rank)["pipe"] for rank in writers) == [0, 1]  # one per stage
    assert [r for r in range(8) if stage_writer(CoordinateGrid(Layout(data=2, pipe=2, col=2), r))] == [0, 2]


def train(path, monkeypatch):
    """A tiny 3-step run at world 1 with GEMM tuning on the CPU: (the trainer, its steps and its
    writes of the cache file, in order)."""
    config = build_config({"model": {"preset": "tiny", "seq_len": 16}, "out_dir": str(path.parent / "run"),
                           "train": {"steps": 3, "global_batch": 4, "micro_batch": 2, "peak_tflops": 1.0,
                                     "checkpoint_every": 0, "gemm_tuning": True, "gemm_tuning_cache": str(path)}})
    grid = Grid(Layout(), 0)
    trainer = Trainer(config, grid, torch.device("cpu"))
    trainer.gemm_tuner.warmup, trainer.gemm_tuner.repeats = 1, 2
    events, step, replace = [], trainer.step, os.replace

    def counted_step(number):
        events.append(f"step {number}")
        return step(number)

    def counted_replace(source, destination):
        events.extend(["write"] if str(destination) == str(path) else [])
        replace(source, destination)

    monkeypatch.setattr(trainer, "step", counted_step)
    monkeypatch.setattr(gemm_cache.os, "replace", counted_replace)
    try:
        trainer.fit()
    finally:
        grid.destroy()
    return trainer, events


def test_a_training_run_writes_the_cache_after_its_first_step_and_at_most_once_more(tmp_path, monkeypatch):
    path = tmp_path / "g.json"
    trainer, events = train(path, monkeypatch)
    # Written once after step 1 (every key appears there); once more at the end only for later keys.
    assert events[:4] == ["step 0", "write", "step 1", "step 2"] and events[4:] in ([], ["write"])
    timed = {(c.dtype, "x".join(map(str, c.shape)), c.held) for c in trainer.gemm_tuner.choices if c.source == "timed"}
    keys = json.loads(path.read_text())["entries"]
    assert timed and {tuple(key.split("|")[2:]) for key in keys} == timed  # every key the tuner timed

    restarted, events = train(path, monkeypatch)  # a restart times nothing and writes nothing
    assert events == ["step 0", "step 1", "step 2"]
    assert {c.source for c in restarted.gemm_tuner.choices} == {"cache"}
