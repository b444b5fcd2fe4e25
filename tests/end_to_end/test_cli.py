"""`python -m axon train` end to end: under torchrun and mpiexec with 4 ranks it trains
exactly like the 1-process run, and bad input stops every rank with one sentence."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import axon
from axon.runtime.metrics import METRIC_KEYS
from axon.testing.processes import clean_env, free_port, start, wait
from axon.testing.runs import one_process_losses, read_metrics, write_tiny_config

def check_run(tmp_path: Path, config: Path, log: str) -> None:
    rows = read_metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert set(METRIC_KEYS) <= set(row)
        assert row["tokens_per_s"] > 0 and row["tflops_per_rank"] > 0 and 0 < row["mfu"]
    expected = one_process_losses(config)
    for got, want in zip([r["loss"] for r in rows], expected):
        assert abs(got - want) / want < 1e-5
    assert "axon: layout data 1 x pipe 1 x depth 2 x row 1 x col 2" in log
    assert "step 3/3 | loss" in log and "MFU" in log and "ETA" in log
    # The banner says which axon, which data and where everything goes; a final checkpoint is kept.
    # (the commit the run saw: other work may commit while a test runs; --version's test pins it to git)
    commit = re.search(rf"^axon {re.escape(axon.__version__)} \(commit ([0-9a-f]{{12}}(\+dirty)?|unknown)\)$", log,
                       re.MULTILINE).group(1)
    assert "axon: data synthetic (data.source: synthetic): a generated Markov chain (train.seed 3)" in log
    assert (f"axon: out_dir {tmp_path / 'out'}; checkpoints after the last step and when stopped by a signal, "
            "the newest 2 kept") in log
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_00000003"]
    assert (tmp_path / "out" / "config.yaml").read_text().startswith(
        f"# written by axon {axon.__version__}, commit {commit}, at the start of this run")
    assert "\r" not in log  # a batch log gets whole lines, no carriage-return redraws
    check_tensorboard(tmp_path / "out" / "tensorboard", rows)


def check_tensorboard(folder: Path, rows: list[dict]) -> None:
    """Rank 0's TensorBoard scalars are the metrics.jsonl values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_rank", "mfu", "peak_memory_gb"):
        scalars = events.Scalars(f"train/{key}")
        assert [e.step for e in scalars] == [r["step"] for r in rows]
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_torchrun_trains_like_one_process(tmp_path):
    config = write_tiny_config(tmp_path, {"depth": 2, "col": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
           "--master-port", str(free_port()), "-m", "axon", "train", str(config)]
    check_run(tmp_path, config, wait([start(cmd, clean_env())]))


def test_mpiexec_trains_like_one_process(tmp_path):
    config = write_tiny_config(tmp_path, {"depth": 2, "col": 2})
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-launcher", "fork", "-n", "4", sys.executable, "-m", "axon", "train", str(config),
           "--set", "train.log_every=1"]
    check_run(tmp_path, config, wait([start(cmd, clean_env())]))


def test_set_overrides_reach_the_run(tmp_path):
    config = write_tiny_config(tmp_path, {})
    out = tmp_path / "other"
    cmd = [sys.executable, "-m", "axon", "train", str(config), "--set", "train.steps=2",
           "--set", f"out_dir={out}", "--set", "train.lr=0.01", "--set", "train.dtype=bfloat16",
           "--set", "train.final_checkpoint=false"]
    log = wait([start(cmd, clean_env())])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["lr"] == pytest.approx(0.01)
    assert not (out / "checkpoints").exists() and "a finished run keeps no weights" in log  # said, as asked
    # a bf16 run's MFU is measured against a bf16 GEMM, and so stays below 1
    assert "(bf16 GEMM timed on all ranks at once, averaged)" in log
    assert all(0 < r["mfu"] < 1 for r in rows)


# (layout, extra config, words every rank's error must contain)
BAD_INPUTS = [
    ({"data": 2}, {}, ["layout", "has 2 ranks", "world size 4"]),
    ({"col": 3}, {}, ["layout", "has 3 ranks", "world size 4"]),
    ({"col": 4}, {"model": {"preset": "tiny", "hidden": 66, "heads": 3, "kv_heads": 3}},
     ["model.hidden=66", "layout.col=4"]),
    ({"row": 4}, {"model": {"preset": "tiny", "heads": 2, "kv_heads": 2}}, ["model.heads=2", "layout.row=4"]),
    ({"row": 4}, {"model": {"preset": "tiny", "heads": 4, "kv_heads": 2}}, ["model.kv_heads=2", "layout.row=4"]),
    ({"row": 4}, {"model": {"preset": "tiny", "kv_heads": 4, "ffn": 190}}, ["model.ffn=190", "layout.row=4"]),
    ({"row": 4}, {"model": {"preset": "tiny", "kv_heads": 4, "vocab": 258}}, ["model.vocab=258", "layout.row=4"]),
    ({"data": 2, "depth": 2}, {"train": {"global_batch": 6}}, ["train.global_batch=6", "2 x 2 = 4"]),
    ({"pipe": 4}, {"model": {"preset": "tiny", "layers": 3}}, ["layout.pipe=4", "model.layers=3"]),
    ({"pipe": 2, "col": 2}, {"train": {"stage_layers": [2, 1]}}, ["train.stage_layers=[2, 1]", "model.layers=2"]),
    # an unset data.source is not a silent run on generated tokens
    ({"depth": 2, "col": 2}, {"data": {}}, ["data.source is not set", "write data.source: synthetic"]),
]


def launch_four_ranks_by_env(config: Path) -> list:
    """Four ranks the way torchrun starts them (its environment), without a rendezvous:
    a bad input must stop each one before it would try to connect."""
    procs = []
    for rank in range(4):
        env = clean_env()
        env.update(RANK=str(rank), WORLD_SIZE="4", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="4",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        procs.append(start([sys.executable, "-m", "axon", "train", str(config)], env))
    return procs


def test_bad_inputs_stop_every_rank_with_one_sentence(tmp_path):
    for case, (layout, extra, words) in enumerate(BAD_INPUTS):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        procs = launch_four_ranks_by_env(write_tiny_config(folder, layout, **extra))
        for rank, proc in enumerate(procs):
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 2, out
            errors = [line for line in out.splitlines() if line.startswith("axon train: error: ")]
            assert len(errors) == 1 and errors[0].startswith(f"axon train: error: rank {rank}: "), out
            for word in words:
                assert word in errors[0], (word, errors[0])


def test_bad_layout_under_real_torchrun_exits_without_hanging(tmp_path):
    config = write_tiny_config(tmp_path, {"row": 4}, model={"preset": "tiny", "heads": 2, "kv_heads": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
           "--master-port", str(free_port()), "-m", "axon", "train", str(config)]
    proc = start(cmd, clean_env())
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # torchrun stops the remaining workers once the first one exits, so how many ranks get to
    # print races with it; that every rank reports is shown by the test above.
    errors = [line for line in out.splitlines() if "axon train: error: " in line]
    assert errors and all("model.heads=2 is not divisible by layout.row=4" in line for line in errors), out
