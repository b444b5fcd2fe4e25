"""Runs that stop early: a real stop signal to the job's process group, and a diverging loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from axon.checkpoint import CheckpointReader, find_latest
from axon.runtime.exit_codes import DIVERGED, PREEMPTED
from axon.testing.processes import REPO, clean_env as _clean_env, free_port as _free_port

CONFIG = {"model": {"preset": "tiny", "seq_len": 16},
          "train": {"steps": 100_000, "global_batch": 8, "lr": 1e-3, "seed": 2, "schedule": "constant"},
          "data": {"source": "synthetic"}}


def write_config(folder: Path, **train) -> Path:
    config = {**CONFIG, "train": {**CONFIG["train"], **train}, "layout": {"col": 2}, "out_dir": str(folder)}
    path = folder / "run.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def start_two_ranks(config: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two ranks in one process group, the way srun's tasks receive a signal together."""
    port, procs = _free_port(), []
    for rank in range(2):
        env = _clean_env()
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "axon", "train", str(config), *overrides]
        group = 0 if rank == 0 else procs[0].pid
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, text=True, process_group=group,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def finish(procs, timeout=120) -> list[tuple[int, str]]:
    try:
        return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        raise


def losses(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def test_sigusr1_checkpoints_every_rank_and_resume_continues_exactly(tmp_path):
    run = tmp_path / "preempted"
    procs = start_two_ranks(write_config(run))
    deadline = time.time() + 90
    while not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.time() < deadline and procs[0].poll() is None, "the run did not start"
        time.sleep(0.2)
    os.killpg(procs[0].pid, signal.SIGUSR1)
    results = finish(procs)
    assert all(code == PREEMPTED == 75 for code, _ in results), results  # checkpointed: requeue me
    latest = find_latest(run / "checkpoints")
    stopped = CheckpointReader(latest).step
    assert f"SIGUSR1 received: stopped after step {stopped}" in results[0][1]

    total = stopped + 3
    resumed = finish(start_two_ranks(run / "run.yaml", "--set", "train.resume=latest",
                                     "--set", f"train.steps={total}"))
    assert all(code == 0 for code, _ in resumed), resumed
    assert f"resumed from {latest} at step {stopped}" in resumed[0][1]

    straight = tmp_path / "straight"
    done = finish(start_two_ranks(write_config(straight, steps=total)))
    assert all(code == 0 for code, _ in done), done
    assert losses(run) == losses(straight)  # bitwise: the curve continues as if never stopped


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    config = write_config(tmp_path, steps=20, lr=1e12, grad_clip=0.0, checkpoint_every=1)
    results = finish(start_two_ranks(config))
    for code, out in results:
        assert code == DIVERGED == 5, out
        assert "loss nan" in out and "stopped before applying the update" in out
    last = find_latest(tmp_path / "checkpoints")
    reader = CheckpointReader(last)
    reader.check_files()
    failed_step = int(results[0][1].split("axon train: error: rank 0: step ")[1].split(":")[0])
    assert reader.step == failed_step - 1


def test_a_corrupt_shard_stops_every_rank_naming_the_file(tmp_path):
    config = write_config(tmp_path, steps=2, checkpoint_every=2)
    assert all(code == 0 for code, _ in finish(start_two_ranks(config)))
    shard = find_latest(tmp_path / "checkpoints") / "ranks_0000" / "rank_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0xFF
    shard.write_bytes(bytes(data))
    results = finish(start_two_ranks(config, "--set", "train.resume=latest", "--set", "train.steps=4"))
    assert [code for code, _ in results] == [2, 2], results
    assert all("ranks_0000/rank_00001.safetensors" in out and "is corrupt" in out for _, out in results), results


class _Vote:
    """A stop signal that only some ranks have received."""

    def __init__(self, requested: bool):
        self.requested = requested


def lone_votes(rank, world, layouts, voters):
    import torch

    from axon.config import build_config
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer

    seen = []
    for layout in layouts:
        sizes = {a: getattr(layout, a) for a in ("data", "pipe", "depth", "row", "col")}
        config = build_config({"model": {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48,
                                          "vocab": 64, "seq_len": 8},
                               "layout": sizes, "train": {"steps": 1, "global_batch": 4}})
        grid = Grid(layout, rank)
        trainer = Trainer(config, grid, torch.device("cpu"))
        for step, voter in enumerate(voters):
            trainer.stop_signal = _Vote(rank == voter)
            losses = trainer.step(step)["loss"]
            seen.append((trainer.stop_agreed, losses))
        grid.destroy()
    return seen


def test_one_ranks_stop_signal_reaches_every_rank_without_a_collective_of_its_own():
    from axon.spec.layout import Layout
    from axon.testing.spawn import run_distributed

    # Every axis is crossed by some layout; the lone voter sits at a different corner each step.
    layouts = [Layout(data=2, depth=2, col=2), Layout(pipe=2, row=2, col=2)]
    voters = [None, 0, 5, 7, 3]
    results = run_distributed(8, lone_votes, layouts, voters)
    for rank_seen in results:
        agreed = [stop for stop, _ in rank_seen]
        assert agreed == [voter is not None for voter in voters] * len(layouts)
    # the vote shares the loss's reduction but never its value: every rank reports the same loss
    assert len({tuple(loss for _, loss in seen) for seen in results}) == 1
