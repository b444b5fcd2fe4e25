"""perfmodel/validation.py, the bookkeeping of benchmarks/perfmodel_validation.py, with the
spawns replaced by made-up times: the anchor runs in every spawn and each spawn's times are
scaled by its drift; the scores are computed by hand."""

from __future__ import annotations

import json

import pytest

from axon.spec.shapes import ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel import validation
from perfmodel.machine import MACHINES_DIR, load_machine


def test_every_spawn_runs_the_anchor_and_is_scaled_by_its_drift():
    """Anchor and six layouts, group 3: three spawns of the anchor and two others, the machine
    1.0x, 1.2x and 0.9x as fast as usual in them. Each spawn's first round is a slow warm-up.
    The anchor's median over spawns is 1.0 s (the 1.0x spawn), so every layout comes back at
    its own time, and the scale of spawn k is 1 / its drift."""
    true_s = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0}
    drifts, spawned = iter([1.0, 1.2, 0.9]), []

    def fake_group(world, spec):
        drift = next(drifts)
        spawned.append(spec["layouts"])
        return [[99.0] + [true_s[name] * drift] * (spec["rounds"] - 1) for name in spec["layouts"]]

    times, scales = validation.measure(8, {"layouts": list("abcdefg"), "rounds": 4}, group=3, measure_group=fake_group)
    assert spawned == [["a", "b", "c"], ["a", "d", "e"], ["a", "f", "g"]]
    assert scales == pytest.approx([1.0, 1.0, 1.0, 1 / 1.2, 1 / 1.2, 1 / 0.9, 1 / 0.9])
    assert times[0] == [1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 0.9, 0.9, 0.9]  # the anchor's, spawn by spawn, warm-ups dropped
    for name, row, scale in zip("bcdefg", times[1:], scales[1:]):
        assert len(row) == 3 and row[0] * scale == pytest.approx(true_s[name])


def test_scores_use_the_scaled_medians_and_name_the_pure_data_layout_first():
    shape = ModelShape(**{**preset("10M").__dict__, "seq_len": 128})
    setup = TrainingSetup(global_batch=16, seq_len=128, dtype="float32")
    layouts = validation.layouts_for(shape, 4, setup)
    assert layouts[0].data == 4 and len(layouts) == 15
    machine = load_machine("perlmutter")
    timed = [[float(k + 1)] * 3 for k in range(len(layouts))]
    plain = validation.score(machine, shape, setup, layouts, timed)
    halved = validation.score(machine, shape, setup, layouts, timed, [0.5] * len(layouts))
    assert [r["measured_s"] for r in halved["rows"]] == [k / 2 + 0.5 for k in range(len(layouts))]
    assert halved["kendall_tau"] == pytest.approx(plain["kendall_tau"])  # one factor: the same ranking
    ratios = [r["predicted_s"] / r["measured_s"] - 1 for r in halved["rows"]]
    assert halved["mape"] == pytest.approx(sum(abs(x) for x in ratios) / len(ratios))


def test_a_run_moves_to_the_history_with_its_profile_and_predicts_the_same_from_it(tmp_path):
    """The latest run names its profile by path; kept in the history it embeds the YAML, which
    the next calibration cannot overwrite, and predicting it again gives the same result."""
    shape = ModelShape(**{**preset("10M").__dict__, "seq_len": 128})
    setup = TrainingSetup(global_batch=16, seq_len=128, dtype="float32")
    profile = tmp_path / "machine.yaml"
    profile.write_text((MACHINES_DIR / "perlmutter.yaml").read_text())
    layouts = validation.layouts_for(shape, 4, setup)[:3]
    world = {"world": 4, "commit": "abc1234", "profile": "machine.yaml",
             **validation.score(load_machine(profile), shape, setup, layouts, [[1.0, 1.1], [2.0], [3.0]])}
    results = tmp_path / "perfmodel_validation.json"
    results.write_text(json.dumps({"commit": "abc1234", "model": "10M", "seq": 128, "batch": 16, "worlds": [world]}))
    assert validation.keep_in_history(results, tmp_path)
    profile.write_text("recalibrated: the next run's profile\n")
    assert not validation.keep_in_history(results, tmp_path)  # a measurement that stopped half-way: kept once
    history = validation.history_of(results)
    assert history.name == "perfmodel_validation_history.json"
    (kept,) = json.loads(history.read_text())
    assert kept["commit"] == "abc1234" and kept["worlds"][0]["profile_file"] == "machine.yaml"
    assert "profile" not in kept["worlds"][0]
    assert validation.repredict(kept["worlds"][0], shape, setup, tmp_path) == kept["worlds"][0]
