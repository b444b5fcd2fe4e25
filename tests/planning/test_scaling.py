"""`python -m axon scaling`: plan against perfmodel, efficiencies by hand, Slurm scripts,
the report on hand-written metrics, and one sentence per bad point."""

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from axon.config import load_config
from axon.planning.scaling import submit as submit_module
from axon.planning.scaling.cli import main, run
from axon.planning.scaling.plan import efficiency, plan_study
from axon.planning.scaling.report import collect, report
from axon.planning.scaling.study import StudyError, load_study
from axon.spec.layout import Layout
from perfmodel.machine import load_machine
from axon.spec.shapes import PRESETS, ModelShape
from perfmodel.predict import predict
from axon.spec.training import TrainingSetup

# The tiny preset's model FLOPs per token at seq 64, by hand (6 N + 12 L h s, N without the
# input embedding): a block has wq 64x64, wk and wv 64x32, wo 64x64, three 64x192 MLP
# matrices and two 64-gains = 49,280; two blocks, the final gain and the 256x64 head: 115,008.
TINY_FLOPS_PER_TOKEN = 6 * 115_008 + 12 * 2 * 64 * 64


def write_study(tmp_path: Path, body: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_plan_equals_perfmodel_predict_at_the_same_layout(tmp_path):
    body = {"kind": "strong", "machine": "dgx-h100", "model": "1B", "seq_len": 2048, "global_batch": 64,
            "steps": 5, "dtype": "bfloat16", "recompute": "block",
            "points": [{"gpus": 8, "layout": {"depth": 8}},
                       {"gpus": 16, "layout": {"data": 2, "depth": 4, "col": 2}},
                       {"gpus": 16, "name": "auto-16"}]}
    plans = plan_study(load_study(write_study(tmp_path, body)))
    machine = load_machine("dgx-h100")
    shape = ModelShape(**{**PRESETS["1B"].__dict__, "seq_len": 2048})
    setup = TrainingSetup(global_batch=64, seq_len=2048, dtype="bfloat16", recompute="block")
    for entry, layout in zip(plans, [Layout(depth=8), Layout(data=2, depth=4, col=2), plans[2].prediction.layout]):
        expected = predict(shape, layout, machine, setup)
        assert entry.problem == ""
        assert entry.prediction.step_time_s == pytest.approx(expected.step_time_s, rel=1e-12)
        assert entry.prediction.tflops_per_gpu == pytest.approx(expected.tflops_per_gpu, rel=1e-12)
        assert entry.prediction.mfu == pytest.approx(expected.mfu, rel=1e-12)
    # layout: auto is perfmodel's pick: no layout given above is predicted faster
    assert plans[2].prediction.step_time_s <= plans[1].prediction.step_time_s
    # strong: (t1 g1) / (tN gN), from the predictions
    t1, t2 = plans[0].prediction.step_time_s, plans[1].prediction.step_time_s
    assert plans[1].efficiency == pytest.approx(t1 * 8 / (t2 * 16), rel=1e-12)
    assert plans[0].efficiency == 1.0


def test_efficiency_formulas_by_hand():
    # weak, the same work per GPU (model and batch per GPU fixed): t1 / tN
    assert efficiency(1e15, 1, 2.0, 8e15, 8, 2.5) == pytest.approx(0.8)
    # strong: (t1 g1) / (tN gN) = (10 x 2) / (3 x 8)
    assert efficiency(5e15, 2, 10.0, 5e15, 8, 3.0) == pytest.approx(20 / 24)
    # weak, the model doubles too (work per GPU doubles): 2 t1 / tN
    assert efficiency(1e15, 1, 2.0, 4e15, 2, 5.0) == pytest.approx(0.8)


def test_submit_slurm_writes_one_script_per_point(tmp_path, monkeypatch, capsys):
    body = {"name": "s", "kind": "weak", "machine": "frontier", "seq_len": 2048, "batch_per_gpu": 2, "steps": 7,
            "dtype": "bfloat16", "recompute": "block", "models": {"small": {"preset": "1B", "layers": 8}},
            "points": [{"name": "one", "model": "small", "gpus": 4, "layout": {"depth": 4}},
                       {"name": "four", "model": "1B", "gpus": 32, "layout": {"data": 4, "depth": 8}}],
            "slurm": {"account": "FROM_STUDY", "partition": "batch", "time": "00:20:00"}}
    study = load_study(write_study(tmp_path, body))
    monkeypatch.setattr(submit_module.shutil, "which", lambda name: None)
    args = argparse.Namespace(launcher="slurm", account="CSC999", partition=None, qos=None, time=None, template=None)
    assert submit_module.submit(study, tmp_path / "run", args) == 0
    printed = capsys.readouterr().out
    for name, nodes, tasks, layout, batch in (("one", 1, 4, {"depth": 4}, 8), ("four", 4, 8, {"data": 4, "depth": 8}, 64)):
        point_dir = (tmp_path / "run" / "points" / name).resolve()
        script = (point_dir / "job.sbatch").read_text()
        assert re.search(rf"^#SBATCH --nodes={nodes}$", script, re.M)
        assert f"--ntasks-per-node={tasks} --gpus-per-node={tasks}" in script
        assert re.search(r"^#SBATCH --account=CSC999\b", script, re.M)  # the command line wins
        assert re.search(r"^#SBATCH --time=00:20:00$", script, re.M)
        assert re.search(r"^#SBATCH --partition=batch$", script, re.M)
        assert f' {point_dir / "config.yaml"} ' in script and "${CONFIG" not in script  # a plain path: no quotes
        assert f"sbatch {point_dir / 'job.sbatch'}" in printed
        config = load_config(point_dir / "config.yaml")  # axon reads it as written
        assert {a: getattr(config.layout, a) for a in layout} == layout
        assert config.train.global_batch == batch and config.train.steps == 7
        assert config.out_dir == str(point_dir)
        assert config.train.peak_tflops == 191.5  # the frontier profile's bf16 peak per GCD
    assert load_config(tmp_path / "run" / "points" / "one" / "config.yaml").model.layers == 8


def test_an_interleaved_layout_reaches_the_run_config(tmp_path):
    body = {"kind": "strong", "machine": "frontier", "model": "1B", "seq_len": 1024, "global_batch": 32, "steps": 3,
            "points": [{"name": "v2", "gpus": 4, "layout": {"pipe": 2, "depth": 2, "virtual_stages": 2}}]}
    study = load_study(write_study(tmp_path, body))
    (entry, path), = submit_module.write_configs(study, tmp_path / "run", None)
    assert entry.prediction.layout == Layout(pipe=2, depth=2, virtual_stages=2)
    assert load_config(path).layout == Layout(pipe=2, depth=2, virtual_stages=2)


def write_metrics(point_dir: Path, times, memory=1.5):
    point_dir.mkdir(parents=True)
    (point_dir / "config.yaml").write_text("{}\n")
    with open(point_dir / "metrics.jsonl", "w") as f:
        for step, seconds in enumerate(times, 1):
            f.write(json.dumps({"step": step, "loss": 5.0, "step_time_s": seconds, "peak_memory_gb": memory + step / 100})
                    + "\n")


def test_report_on_hand_written_metrics(tmp_path):
    body = {"name": "r", "kind": "strong", "machine": "dgx-h100", "model": "tiny", "seq_len": 64, "global_batch": 8,
            "steps": 6, "warmup_steps": 2, "dtype": "float32",
            "points": [{"name": "g1", "gpus": 1, "layout": {"data": 1}},
                       {"name": "g2", "gpus": 2, "layout": {"data": 2}},
                       {"name": "g4", "gpus": 4, "layout": {"data": 4}},
                       {"name": "g8", "gpus": 8, "layout": {"data": 8}}]}
    study = load_study(write_study(tmp_path, body))
    points = tmp_path / "run" / "points"
    write_metrics(points / "g1", [5.0, 4.0, 1.0, 1.2, 1.1, 0.9])  # steady: 1.0 1.2 1.1 0.9 -> median 1.05
    write_metrics(points / "g2", [3.0, 0.5, 0.7, 0.6, 0.8, 0.7])  # steady: 0.7 0.6 0.8 0.7 -> median 0.7
    write_metrics(points / "g4", [2.0, 1.0, 0.5])  # stopped after step 3 of 6
    # g8 never ran: no directory at all
    out = tmp_path / "results"
    assert report(study, tmp_path / "run", out) == 1  # not every point finished
    table = {row["point"]: row for row in json.loads((out / "results.json").read_text())}
    flops = TINY_FLOPS_PER_TOKEN * 8 * 64
    peak = load_machine("dgx-h100").peak_tflops["float32"]
    assert table["g1"]["step_time_s"] == pytest.approx(1.05)
    assert table["g2"]["step_time_s"] == pytest.approx(0.7)
    assert table["g1"]["tflops_per_gpu"] == pytest.approx(flops / 1.05 / 1e12)
    assert table["g2"]["tflops_per_gpu"] == pytest.approx(flops / 0.7 / 2 / 1e12)
    assert table["g2"]["mfu"] == pytest.approx(flops / 0.7 / 2 / 1e12 / peak)
    assert table["g2"]["efficiency"] == pytest.approx(1.05 * 1 / (0.7 * 2))  # strong: (t1 g1) / (tN gN)
    assert table["g1"]["peak_memory_gb"] == pytest.approx(1.56)
    assert [table[p]["status"] for p in ("g1", "g2", "g4", "g8")] == ["ok", "ok", "unfinished", "not run"]
    assert table["g4"]["step_time_s"] == pytest.approx(0.5)  # step 3, the one step after warm-up
    assert table["g8"]["step_time_s"] is None and table["g8"]["predicted_step_time_s"] > 0
    assert "Not measured in full: g4 (unfinished), g8 (not run)." in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().count("\n") == 5
    for png in ("efficiency.png", "tflops.png", "breakdown.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # a run that exited badly with no metrics is "failed"
    (points / "g8").mkdir()
    (points / "g8" / "config.yaml").write_text("{}\n")
    (points / "g8" / "exit_code").write_text("1\n")
    assert collect(study, tmp_path / "run")[3][1].status == "failed"


def test_weak_report_efficiency_counts_the_work_per_gpu(tmp_path):
    body = {"kind": "weak", "machine": "dgx-h100", "seq_len": 64, "batch_per_gpu": 4, "steps": 3, "warmup_steps": 1,
            "dtype": "float32", "points": [{"model": "tiny", "gpus": 1, "layout": {"data": 1}},
                                           {"model": "tiny", "gpus": 2, "layout": {"data": 2}}]}
    study = load_study(write_study(tmp_path, body))
    write_metrics(tmp_path / "run" / "points" / "tiny-1", [9.0, 2.0, 2.0])
    write_metrics(tmp_path / "run" / "points" / "tiny-2", [9.0, 2.5, 2.5])
    results = collect(study, tmp_path / "run")
    assert results[1][1].efficiency == pytest.approx(2.0 / 2.5)  # same model and batch per GPU: t1 / tN
    # a point that ran at another layout than today's plan is predicted at the layout it ran at
    ran = {"data": 1, "pipe": 1, "depth": 2, "row": 1, "col": 1, "order": "data,pipe,depth,row,col"}
    (tmp_path / "run" / "points" / "tiny-2" / "config.yaml").write_text(yaml.safe_dump({"layout": ran}))
    entry = collect(study, tmp_path / "run")[1][0]
    expected = predict(ModelShape(**{**PRESETS["tiny"].__dict__, "seq_len": 64}), Layout(depth=2),
                       load_machine("dgx-h100"), TrainingSetup(global_batch=8, seq_len=64, dtype="float32"))
    assert entry.prediction.layout == Layout(depth=2)
    assert entry.prediction.step_time_s == pytest.approx(expected.step_time_s, rel=1e-12)
    first = results[0][0].prediction.step_time_s
    assert entry.efficiency == pytest.approx(first / expected.step_time_s, rel=1e-12)  # same work per GPU: t1 / tN


def test_bad_points_one_sentence_each(tmp_path, capsys):
    body = {"kind": "strong", "machine": "frontier", "model": "tiny", "seq_len": 64, "global_batch": 4, "steps": 3,
            "dtype": "float32",
            "points": [{"name": "ok", "gpus": 1},
                       {"name": "heads", "gpus": 8, "layout": {"row": 8}},
                       {"name": "batch", "gpus": 8, "layout": {"data": 8}},
                       {"name": "nodes", "gpus": 12, "layout": {"data": 12}}]}
    assert run(["plan", str(write_study(tmp_path, body))]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "axon scaling: error: point heads (8 GPUs): layout row=8: model.heads=4 is not divisible by layout.row=8, "
        "which splits it",
        "axon scaling: error: point batch (8 GPUs): layout data=8: train.global_batch=4 is not divisible by "
        "layout.data x layout.depth = 8 x 1 = 8",
        "axon scaling: error: point nodes (12 GPUs): gpus=12 is not a multiple of the 8 devices per node of machine "
        "'frontier' (nor a part of one node)"]
    body = {"kind": "strong", "machine": "dgx-h100", "model": "405B", "seq_len": 8192, "global_batch": 8, "steps": 3,
            "points": [{"gpus": 8, "layout": {"depth": 8}}, {"gpus": 8, "name": "auto"}]}
    assert run(["plan", str(write_study(tmp_path, body)), "--json"]) == 2
    explicit, auto = capsys.readouterr().err.strip().splitlines()
    usable = r"needs \d+\.\d GiB per device, more than 72\.0 GiB usable \(90% of 80\)"
    assert re.fullmatch(r"axon scaling: error: point 405B-8 \(8 GPUs\): layout depth=8 does not fit in memory: "
                        + usable, explicit), explicit
    assert re.fullmatch(r"axon scaling: error: point auto \(8 GPUs\): no layout fits in memory; the fastest, "
                        r"[a-z=0-9 ]+, " + usable, auto), auto


def test_a_profile_without_the_study_dtype_is_one_sentence(tmp_path, capsys):
    profile = Path(__file__).resolve().parents[2] / "benchmarks" / "studies" / "machines" / "cpu_1ranks.yaml"
    body = {"kind": "strong", "machine": str(profile), "model": "tiny", "seq_len": 64, "global_batch": 4,
            "steps": 3, "dtype": "bfloat16", "points": [{"gpus": 1, "name": "p"}]}
    assert run(["plan", str(write_study(tmp_path, body))]) == 2
    assert capsys.readouterr().err.strip() == ("axon scaling: error: point p (1 GPU): machine 'calibrated-vm' has no "
                                               "peak_tflops for dtype 'bfloat16'; it lists float32")


def test_unknown_study_keys_are_named(tmp_path, capsys):
    body = {"kind": "weak", "machine": "frontier", "seq_len": 64, "batch_per_gpu": 1, "steps": 3, "stpes": 4,
            "points": [{"model": "tiny", "gpus": 1}]}
    with pytest.raises(SystemExit) as stopped:  # what `python -m axon scaling plan` exits with
        main(["plan", str(write_study(tmp_path, body))])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "axon scaling: error: unknown key 'stpes'; valid keys here are " + ", ".join(
            __import__("axon.planning.scaling.study", fromlist=["STUDY_KEYS"]).STUDY_KEYS))
    body.pop("stpes")
    body["points"][0]["gpu"] = 2
    with pytest.raises(StudyError, match=r"^unknown key 'points\[0\]\.gpu'; valid keys here are name, model, "
                                         r"gpus, layout, machine$"):
        load_study(write_study(tmp_path, body))


def test_submit_local_runs_points_in_turn_and_keeps_exit_codes(tmp_path, monkeypatch):
    body = {"kind": "strong", "machine": "dgx-h100", "model": "tiny", "seq_len": 64, "global_batch": 8, "steps": 2,
            "dtype": "float32", "points": [{"name": "a", "gpus": 1}, {"name": "b", "gpus": 2, "layout": {"data": 2}}]}
    study = load_study(write_study(tmp_path, body))
    started = []

    def fake_torchrun(gpus, config):  # stands in for torchrun: says what it was given, exits 0 on 1 rank, 3 on 2
        started.append((gpus, config))
        return [sys.executable, "-c", f"print('ranks {gpus}'); raise SystemExit({0 if gpus == 1 else 3})"]

    monkeypatch.setattr(submit_module, "torchrun_command", fake_torchrun)
    args = argparse.Namespace(launcher="local", timeout=60.0)
    assert submit_module.submit(study, tmp_path / "run", args) == 1
    points = (tmp_path / "run" / "points").resolve()
    assert started == [(1, points / "a" / "config.yaml"), (2, points / "b" / "config.yaml")]
    assert [(points / p / "exit_code").read_text() for p in "ab"] == ["0\n", "3\n"]
    assert (points / "b" / "log.txt").read_text() == "ranks 2\n"
    assert collect(study, tmp_path / "run")[1][1].status == "failed"
    body["points"].append({"name": "c", "gpus": 16})  # two nodes of 8: not for torchrun here
    with pytest.raises(StudyError, match=r"^point c needs 2 nodes of 'dgx-h100'; --launcher local runs one node's "
                                         r"ranks here: use slurm$"):
        submit_module.submit(load_study(write_study(tmp_path, body)), tmp_path / "run2", args)
    assert not (tmp_path / "run2").exists()


# A study that submits cleanly; the injection test below spoils one field at a time.
SAFE_STUDY = {"name": "s", "kind": "strong", "machine": "frontier", "model": "tiny", "seq_len": 64, "global_batch": 8,
              "steps": 3, "dtype": "float32", "points": [{"name": "p1", "gpus": 8, "layout": {"data": 8}}],
              "slurm": {"account": "CSC999", "partition": "batch", "qos": "normal", "constraint": "gpu&hbm",
                        "time": "1-02:30:00", "template": "frontier"}}
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
WORD_RULE = "1 to 64 letters, digits, '_', '.' or '-'"
TIME_RULE = "a quoted Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
TEMPLATE_RULE = "the stem of a launch/ script (such as frontier); give any other file with --template"


def spoiled(where: tuple, value) -> dict:
    body = json.loads(json.dumps(SAFE_STUDY))
    if where == ("models",):  # a custom model under a bad name, used by the point
        body["models"] = {value: {"preset": "tiny"}}
        body["model"] = value
        return body
    inner = body
    for key in where[:-1]:
        inner = inner[key]
    inner[where[-1]] = value
    return body


@pytest.mark.parametrize("where, value, sentence", [
    (("name",), "s$(id>pwned)", f"study key name='s$(id>pwned)' must be {NAME_RULE}"),
    (("points", 0, "name"), "p$(id>pwned)", f"study key points[0].name='p$(id>pwned)' must be {NAME_RULE}"),
    (("points", 0, "name"), "p`id`", f"study key points[0].name='p`id`' must be {NAME_RULE}"),
    (("points", 0, "name"), "a;id", f"study key points[0].name='a;id' must be {NAME_RULE}"),
    (("points", 0, "name"), "a\nid", f"study key points[0].name='a\\nid' must be {NAME_RULE}"),
    (("points", 0, "name"), "a\\nid", f"study key points[0].name='a\\\\nid' must be {NAME_RULE}"),
    (("points", 0, "name"), "it's", f"study key points[0].name=\"it's\" must be {NAME_RULE}"),
    (("points", 0, "name"), 'a "b" c', f"study key points[0].name='a \"b\" c' must be {NAME_RULE}"),
    (("points", 0, "name"), "..", f"study key points[0].name='..' must be {NAME_RULE}"),
    (("points", 0, "name"), ".hidden", f"study key points[0].name='.hidden' must be {NAME_RULE}"),
    (("points", 0, "name"), "-rf", f"study key points[0].name='-rf' must be {NAME_RULE}"),
    (("models",), "m\nid", f"study key models names a model 'm\\nid'; a model name must be {NAME_RULE}"),
    (("slurm", "account"), "ABC\nid > pwned", f"study key slurm.account='ABC\\nid > pwned' must be {WORD_RULE}"),
    (("slurm", "account"), "ABC\\nid", f"study key slurm.account='ABC\\\\nid' must be {WORD_RULE}"),
    (("slurm", "account"), "A;id", f"study key slurm.account='A;id' must be {WORD_RULE}"),
    (("slurm", "account"), ["A"], f"study key slurm.account=['A'] must be {WORD_RULE}"),
    (("slurm", "partition"), "batch$(id)", f"study key slurm.partition='batch$(id)' must be {WORD_RULE}"),
    (("slurm", "qos"), "q'x", f"study key slurm.qos=\"q'x\" must be {WORD_RULE}"),
    (("slurm", "constraint"), "gpu`id`",
     "study key slurm.constraint='gpu`id`' must be 1 to 64 letters, digits, '_', '.', '-', '&' or '|'"),
    (("slurm", "time"), "00:30:00\nid", f"study key slurm.time='00:30:00\\nid' must be {TIME_RULE}"),
    (("slurm", "time"), "1:2:3:4", f"study key slurm.time='1:2:3:4' must be {TIME_RULE}"),
    (("slurm", "time"), 1800, f"study key slurm.time=1800 must be {TIME_RULE}"),  # YAML's reading of 30:00
    (("slurm", "template"), "/etc/passwd", f"study key slurm.template='/etc/passwd' must be {TEMPLATE_RULE}"),
    (("slurm", "template"), "../launch/frontier",
     f"study key slurm.template='../launch/frontier' must be {TEMPLATE_RULE}"),
    (("slurm", "template"), "frontier.sbatch", f"study key slurm.template='frontier.sbatch' must be {TEMPLATE_RULE}"),
])
def test_a_study_cannot_put_shell_code_in_a_job_script(tmp_path, capsys, where, value, sentence):
    path = write_study(tmp_path, spoiled(where, value))
    with pytest.raises(StudyError) as refused:
        load_study(path)
    assert str(refused.value) == sentence
    assert run(["submit", str(path), "--launcher", "slurm", "--dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"axon scaling: error: {sentence}\n"  # one line: the value's repr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, sentence", [
    ("--account", "X;id", f"--account='X;id' must be {WORD_RULE}"),
    ("--partition", "b\nid", f"--partition='b\\nid' must be {WORD_RULE}"),
    ("--qos", "$(id)", f"--qos='$(id)' must be {WORD_RULE}"),
    ("--time", "10 && id", f"--time='10 && id' must be {TIME_RULE}"),
])
def test_bad_command_line_slurm_values_write_nothing(tmp_path, capsys, option, value, sentence):
    path = write_study(tmp_path, SAFE_STUDY)
    assert run(["submit", str(path), "--launcher", "slurm", "--dir", str(tmp_path / "run"), option, value]) == 2
    assert capsys.readouterr().err == f"axon scaling: error: {sentence}\n"
    assert not (tmp_path / "run").exists()


def test_a_point_directory_cannot_leave_the_study_directory(tmp_path, capsys):
    path = write_study(tmp_path, SAFE_STUDY)
    points, elsewhere = tmp_path / "run" / "points", tmp_path / "elsewhere"
    points.mkdir(parents=True)
    elsewhere.mkdir()
    (points / "p1").symlink_to(elsewhere)  # left there by someone: the point would write through it
    assert run(["submit", str(path), "--launcher", "slurm", "--dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (f"axon scaling: error: point p1: its directory resolves to {elsewhere.resolve()}, "
                                       f"outside {points.resolve()}\n")
    assert list(elsewhere.iterdir()) == []
    # a --dir a #SBATCH line cannot hold is refused, and no script is written
    odd = tmp_path / "a b"
    assert run(["submit", str(path), "--launcher", "slurm", "--dir", str(odd)]) == 2
    assert capsys.readouterr().err == (f"axon scaling: error: the point directory {str(odd.resolve() / 'points' / 'p1')!r} "
                                       "cannot go on a #SBATCH line, whose paths may hold only letters, digits and "
                                       "_ . , / % + = @ -\n")
    assert not (odd / "points" / "p1" / "job.sbatch").exists()


def test_a_safe_job_script_parses_to_the_template_plus_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr(submit_module.shutil, "which", lambda name: None)
    assert run(["submit", str(write_study(tmp_path, SAFE_STUDY)), "--launcher", "slurm",
                "--dir", str(tmp_path / "run")]) == 0
    point_dir = (tmp_path / "run" / "points" / "p1").resolve()
    config = point_dir / "config.yaml"
    script = (point_dir / "job.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(point_dir / "job.sbatch")]).returncode == 0
    template = (submit_module.LAUNCH / "frontier.sbatch").read_text()
    # the template's srun line with its "${CONFIG:?...}" word (only that) as the config path
    srun_line = next(line for line in template.splitlines() if '"${CONFIG:?' in line)
    config_line = re.sub(r'"\$\{CONFIG:\?[^}]*\}"', lambda _: str(config), srun_line)
    added = Counter(script.splitlines()) - Counter(template.splitlines())
    assert sorted(added.elements()) == sorted([
        "# strong scaling study s, point p1: tiny on 8 devices (data=8 pipe=1 depth=1 row=1 col=1);",
        f"# written by `python -m axon scaling submit`; its run writes to {point_dir}",
        "#SBATCH --account=CSC999            # your OLCF project", "#SBATCH --nodes=1", "#SBATCH --time=1-02:30:00",
        "#SBATCH --job-name=s-p1", f"#SBATCH --output={point_dir}/slurm-%j.out", f"#SBATCH --chdir={submit_module.REPO}",
        "#SBATCH --qos=normal", "#SBATCH --constraint=gpu&hbm", config_line])
    # header 2 lines, and the 3 directives frontier.sbatch lacks (chdir, qos, constraint): nothing else
    assert len(script.splitlines()) == len(template.splitlines()) + 5
    srun = next(line for line in script.replace("\\\n", " ").splitlines() if line.startswith("srun "))
    words = shlex.split(srun)
    assert words[words.index("${AXON_COMMAND:-train}") + 1] == str(config)  # one word
    assert words.count(str(config)) == 1 and "${CONFIG" not in script


def test_a_command_line_template_file_by_hand(tmp_path, monkeypatch):
    # any file is allowed from --template (the submitter's own); the srun line is the resume-aware one
    template = tmp_path / "mine.sh"
    template.write_text('#!/bin/bash\n#SBATCH --account=X\n#SBATCH --nodes=2\n'
                        'srun --ntasks-per-node=4 --gpus-per-node=4 \\\n'
                        '    python -m axon "${AXON_COMMAND:-train}" "${CONFIG:?set CONFIG=path/to/run.yaml}" '
                        '${RESUME[@]+"${RESUME[@]}"} "$@"\n')
    monkeypatch.setattr(submit_module.shutil, "which", lambda name: None)
    body = {**SAFE_STUDY, "slurm": {"account": "A1", "time": "90"}}
    assert run(["submit", str(write_study(tmp_path, body)), "--launcher", "slurm", "--dir", str(tmp_path / "run"),
                "--template", str(template), "--account", "B2"]) == 0
    point_dir = (tmp_path / "run" / "points" / "p1").resolve()
    assert (point_dir / "job.sbatch").read_text() == (
        "#!/bin/bash\n"
        "# strong scaling study s, point p1: tiny on 8 devices (data=8 pipe=1 depth=1 row=1 col=1);\n"
        f"# written by `python -m axon scaling submit`; its run writes to {point_dir}\n"
        "#SBATCH --account=B2\n"
        "#SBATCH --nodes=1\n"
        "#SBATCH --job-name=s-p1\n"
        f"#SBATCH --output={point_dir}/slurm-%j.out\n"
        "#SBATCH --time=90\n"
        f"#SBATCH --chdir={submit_module.REPO}\n"
        "srun --ntasks-per-node=8 --gpus-per-node=8 \\\n"
        f'    python -m axon "${{AXON_COMMAND:-train}}" {point_dir / "config.yaml"} ${{RESUME[@]+"${{RESUME[@]}}"}} "$@"\n')
    assert subprocess.run(["bash", "-n", str(point_dir / "job.sbatch")]).returncode == 0


def test_a_study_expands_environment_variables_like_a_run_config(tmp_path, monkeypatch):
    from axon.planning.scaling.study import StudyError, load_study

    monkeypatch.setenv("AXON_TEST_DATA", str(tmp_path / "corpus.tok"))
    monkeypatch.delenv("AXON_TEST_UNSET", raising=False)
    study = load_study(write_study(tmp_path, {**SAFE_STUDY, "data": "${AXON_TEST_DATA}"}))
    assert study.data == str(tmp_path / "corpus.tok")
    with pytest.raises(StudyError) as err:
        load_study(write_study(tmp_path, {**SAFE_STUDY, "slurm": {**SAFE_STUDY["slurm"], "account": "$AXON_TEST_UNSET"}}))
    assert str(err.value) == "slurm.account='$AXON_TEST_UNSET' names environment variable $AXON_TEST_UNSET, which is not set"
