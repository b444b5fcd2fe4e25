"""lr: auto (axon.memorize.lr_selection): the probes a sweep plans, the split they are scored on,
the choice, and a sweep end to end that chooses, freezes and resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from axon.config import ConfigError
from axon.memorize.experiment import load_experiment
from axon.memorize.lr_selection import choose, edge_notes, settle
from axon.memorize.resume import fingerprint
from axon.memorize.runner import plan_runs
from axon.runtime.trainer import TrainingDiverged
from axon.testing.tiny_experiment import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[2]


def _auto_experiment(tmp_path: Path, candidates=(1e-3, 3e-2, 1e4), seed: int = 77) -> Path:
    """The tiny experiment with model a at lr: auto (b keeps its own 4e-3)."""
    path = write_tiny_experiment(tmp_path / "exp.yaml", tmp_path / "out", acr="none")
    config = yaml.safe_load(path.read_text())
    config["models"][0]["lr"] = "auto"
    config["lr_selection"] = {"candidates": list(candidates), "seed": seed}
    path.write_text(yaml.safe_dump(config))
    return path


def test_choose_takes_the_lowest_finite_validation_loss_and_the_smaller_rate_on_a_tie():
    rows = [{"model": "a", "lr": 3e-3, "val_loss": 2.5}, {"model": "a", "lr": 1e-3, "val_loss": 2.7},
            {"model": "a", "lr": 1e-2, "val_loss": float("nan"), "diverged": True},
            {"model": "b", "lr": 2e-3, "val_loss": 1.25}, {"model": "b", "lr": 1e-3, "val_loss": 1.25}]
    assert choose(rows) == {"a": 3e-3, "b": 1e-3}
    assert edge_notes((1e-3, 3e-3, 1e-2), {"a": 3e-3, "b": 1e-3}) == [  # b's best may lie below the grid
        "model b: the chosen rate 0.001 is the smallest candidate, so a smaller one may do better: widen "
        "lr_selection.candidates"]
    probes = [types.SimpleNamespace(probe=True, lr_auto=False, model=types.SimpleNamespace(name="c"))]
    runtime = types.SimpleNamespace(rank=0, world_size=1)
    with pytest.raises(TrainingDiverged, match=r"every lr_selection candidate \(0.001, 0.01\) diverged for model c"):
        settle(runtime, Path("."), types.SimpleNamespace(candidates=(1e-3, 1e-2), seed=1),
               [{"model": "c", "lr": 1e-3, "val_loss": math.nan}], probes)


def test_auto_needs_a_selection_on_a_seed_of_its_own(tmp_path):
    path = _auto_experiment(tmp_path)
    with pytest.raises(ConfigError, match="models a have lr: auto, which needs lr_selection"):
        load_experiment(path, ["lr_selection=null"])
    with pytest.raises(ConfigError, match=r"lr_selection.seed=0 is also a seed of the reported runs \(0, 1\)"):
        load_experiment(path, ["seeds=[0, 1]", "lr_selection.seed=0"])
    with pytest.raises(ConfigError, match="lr_selection.candidates must be a non-empty list of distinct positive"):
        load_experiment(path, ["lr_selection.candidates=[0.001, -1]"])
    config = yaml.safe_load(path.read_text())
    config["models"][0]["lr"] = "fast"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"models\[0\].lr must be a positive number .* or auto"):
        load_experiment(path)


def test_probes_come_first_on_their_own_seed_and_filler(tmp_path):
    exp = load_experiment(_auto_experiment(tmp_path))
    _, runs = plan_runs(exp, 1)
    probes, reported = runs[:3], runs[3:]
    assert [(r.probe, r.model.name, r.loss.kind, r.seed, r.config.train.lr, r.config.train.seed) for r in probes] == [
        (True, "a", "standard", 77, lr, 77) for lr in (1e-3, 3e-2, 1e4)]
    assert all(Path(r.config.out_dir).parent == tmp_path / "out" / "lr_selection" for r in probes)
    assert [(r.probe, r.lr_auto) for r in reported] == [(False, True)] * 2 + [(False, False)] * 2
    # The probes' validation windows are none of the windows a reported run reads (validation, filler, paddings).
    stream = reported[0].stream
    read = {tuple(stream.filler.window(w)) for w in range(stream.pad_start + stream.epochs * stream.injected)}
    held_out = [tuple(w) for w in probes[0].stream.validation()]
    assert len(held_out) == 4 and not read & set(held_out)
    assert not np.array_equal(probes[0].stream.validation(), stream.validation())
    # A reported run's fingerprint names how its rate is chosen, not the placeholder it has until then.
    before = fingerprint(exp, reported[0])
    reported[0].config.train.lr = 3e-2
    assert fingerprint(exp, reported[0]) == before
    other = load_experiment(tmp_path / "exp.yaml", ["lr_selection.candidates=[0.001, 0.03]"])
    assert fingerprint(other, plan_runs(other, 1)[1][2]) != before


def test_sweep_chooses_freezes_and_resumes(tmp_path):
    config = _auto_experiment(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    run = lambda: subprocess.run([sys.executable, "-m", "axon", "memorize", str(config)], capture_output=True,
                                 text=True, cwd=ROOT, env=env, timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    record = json.loads((out / "lr_selection.json").read_text())
    probes = {p["lr"]: p for p in record["probes"]}
    assert probes[1e4]["diverged"] is True and "diverged" in first.stdout  # lr 1e4 loses, the sweep goes on
    finite = {lr: p["val_loss"] for lr, p in probes.items() if not p.get("diverged")}
    best = min(finite, key=finite.get)
    assert record["chosen"] == {"a": best} and record["seed"] == 77
    # Each probe's recorded validation loss is its cell's last row (the run that trained it).
    for lr, loss in finite.items():
        cell = json.loads((out / "lr_selection" / f"a-standard-seed77-lr{lr:g}" / "cell.json").read_text())
        assert cell["done"] and cell["rows"][-1]["val_loss"] == loss and cell["rows"][-1]["lr"] == lr
    rows = json.loads((out / "results.json").read_text())
    assert {(r["model"], r["loss_kind"], r["lr"]) for r in rows} == {
        ("a", "standard", best), ("a", "goldfish", best), ("b", "standard", 4e-3), ("b", "goldfish", 4e-3)}
    assert "| a | 3.0e-02 |" in (out / "lr_selection.md").read_text()
    assert (out / "lr_selection.md").read_text() in (out / "summary.md").read_text()
    # The rerun reads every cell back: no step trained, the same choice, the same results.
    again = run()
    assert again.returncode == 0, again.stderr
    assert "step 1/" not in again.stdout and again.stdout.count("not run again") == 7
    assert json.loads((out / "lr_selection.json").read_text())["chosen"] == {"a": best}
    assert json.loads((out / "results.json").read_text()) == rows
