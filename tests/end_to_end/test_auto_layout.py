"""`layout: auto`: the engine asks perfmodel, trains on the layout it picks, and reports
predicted against measured; without a profile it calibrates once and caches the result."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from axon.planning.auto_layout import training_setup
from axon.config import ConfigError, load_config
from perfmodel.machine import load_machine
from perfmodel.search import plan
from axon.testing.processes import clean_env, free_port, start, wait
from axon.testing.runs import one_process_losses, read_metrics, write_tiny_config

AUTO = {"model": {"preset": "tiny", "seq_len": 16}, "layout": "auto",
        "train": {"steps": 3, "global_batch": 8, "lr": 1e-3, "seed": 3}, "data": {"source": "synthetic"}}


def torchrun(config, *extra) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
           "--master-port", str(free_port()), "-m", "axon", "train", str(config), *extra]
    return wait([start(cmd, clean_env())])


def test_auto_layout_with_a_named_profile_trains_the_planned_layout(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**AUTO, "layout_machine": "perlmutter", "out_dir": str(tmp_path / "out")}))
    log = torchrun(config)
    resolved = load_config(config)
    best = next(p for p in plan(resolved.model, 4, load_machine("perlmutter"), training_setup(resolved),
                                ("data", "depth", "row", "col"))[0] if p.fits)
    record = json.loads((tmp_path / "out" / "layout_auto.json").read_text())
    assert record["chosen"]["layout"] == best.to_dict()["layout"]
    assert record["chosen"]["step_time_s"] == pytest.approx(best.step_time_s)
    assert record["measured_median_step_s"] > 0
    assert "axon: layout auto -> " in log and "measured / predicted" in log, log
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert {a: saved["layout"][a] for a in ("data", "depth", "row", "col")} == \
        {a: record["chosen"]["layout"][a] for a in ("data", "depth", "row", "col")}
    # Whatever it picked trains like one process.
    losses = [r["loss"] for r in read_metrics(tmp_path / "out")]
    for got, want in zip(losses, one_process_losses(config)):
        assert abs(got - want) / want < 1e-5


def test_auto_layout_calibrates_once_then_reuses_the_profile(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**AUTO, "out_dir": str(tmp_path / "out")}))
    first = torchrun(config)
    profile = tmp_path / "out" / "machine_profile.yaml"
    machine = load_machine(profile)  # a profile plan accepts, measured on these 4 ranks
    assert machine.devices_per_node == 4 and machine.collectives["all_reduce"]["intra"]
    assert "axon: layout auto -> " in first, first
    stamp = profile.stat().st_mtime_ns
    second = torchrun(config, "--set", "train.steps=2", "--set", f"out_dir={tmp_path / 'out'}", "--overwrite")
    assert profile.stat().st_mtime_ns == stamp and "axon: layout auto -> " in second, second


def test_auto_layout_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="layout_machine='perlmutter' only applies to layout: auto"):
        load_config(write_tiny_config(tmp_path, {"col": 2}, layout_machine="perlmutter"))
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump({**AUTO, "layout_machine": "nosuch", "out_dir": str(tmp_path / "o")}))
    from axon.planning.auto_layout import profile_before_start

    with pytest.raises(ConfigError, match="layout_machine='nosuch': machine 'nosuch' is neither a shipped profile"):
        profile_before_start(load_config(path))
