"""The fault table's save rows in a shorter form (benchmarks/faults.py runs them on 2 ranks):
one process, SIGKILLed at each point of a save, then resumed with train.resume=latest; and a
newest checkpoint whose bytes were flipped, which `latest` passes over for the one before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from axon.checkpoint import CheckpointReader
from axon.testing.processes import REPO, clean_env

# (save point, the step resume: latest continues from, checkpoints on disk after the kill)
KILLS = [("shards", 2, ["step_00000002"]), ("meta", 2, ["step_00000002"]),
         ("renamed", 4, ["step_00000002", "step_00000004"]), ("prune", 4, ["step_00000004"])]


def _config(folder: Path, keep: int) -> Path:
    config = {"model": {"preset": "tiny", "seq_len": 16},
              "train": {"steps": 6, "global_batch": 8, "lr": 1e-3, "seed": 3, "peak_tflops": 1.0,
                        "checkpoint_every": 2, "keep_checkpoints": keep},
              "data": {"source": "synthetic"}, "out_dir": str(folder / "out")}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(clean_env(), **({"AXON_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, "-m", "axon", "train", str(config), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("at, resumed, left", KILLS, ids=[k[0] for k in KILLS])
def test_a_kill_at_any_point_of_a_save_loses_at_most_checkpoint_every_steps_and_no_file(tmp_path, at, resumed, left):
    config = _config(tmp_path, keep=1 if at == "prune" else 10)
    out = tmp_path / "out"
    killed = _train(config, fault=f"die:rank=0:step=4:at={at}")
    assert killed.returncode == -9, killed.stderr
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "meta.json").is_file()
                  and not p.name.endswith((".partial", ".pruned")))
    assert done == left
    for name in left:  # what was complete before the kill still verifies
        CheckpointReader(out / "checkpoints" / name).verify()

    again = _train(config, "--set", "train.resume=latest")
    assert again.returncode == 0, again.stderr
    assert f"at step {resumed} " in again.stdout and "took over the lock of job" in again.stdout
    assert _steps(out) == [1, 2, 3, 4, 5, 6]  # the steps after the resume step are in the log once
    assert not list((out / "checkpoints").glob("*.pruned")) and not (out / ".lock").exists()


def test_latest_passes_over_a_newest_checkpoint_that_fails_its_checksums(tmp_path):
    config = _config(tmp_path, keep=10)
    out = tmp_path / "out"
    assert _train(config).returncode == 0
    shard = out / "checkpoints" / "step_00000006" / "ranks_0000" / "rank_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])  # the same size: only the sha256 tells
    shard.write_bytes(bytes(data))
    again = _train(config, "--set", "train.resume=latest", "--set", "train.steps=7")
    assert again.returncode == 0, again.stderr
    assert "passes over a checkpoint: checkpoint shard" in again.stdout and "is corrupt" in again.stdout
    assert "at step 4 " in again.stdout
    assert _steps(out) == [1, 2, 3, 4, 5, 6, 7]
    CheckpointReader(out / "checkpoints" / "step_00000006").verify()  # saved again whole after step 6
