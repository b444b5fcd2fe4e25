"""`perfmodel plan --config RUN.yaml` plans the run `axon train` would run: the same model,
batch, length and settings, the same defaults; when nothing fits, one line says what would.

References: the same plan given by flags (the config path must add nothing), the schema's
defaults written out as literals, and perfmodel.search.fits_in_memory for the suggestion.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from axon.config import ConfigError, load_config
from axon.planning.auto_layout import choose
from axon.spec.config_file import planned_run
from axon.spec.hf_config import hf_config
from axon.spec.layout import factorizations
from axon.spec.shapes import preset
from axon.spec.training import TrainingSetup
from axon.testing.processes import REPO
from perfmodel.cli import build_parser, main, run_from_flags
from perfmodel.machine import load_machine
from perfmodel.search import fits_in_memory, layout_problem

LOCAL = str(REPO / "axon" / "configs" / "local.yaml")
ALL_OVERLAPS = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")


def _plan(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("config_args, flag_args", [
    ([], []),
    (["--set", "train.dtype=bfloat16", "--set", "train.recompute=block", "--set", "train.micro_batch=2"],
     ["--dtype", "bfloat16", "--recompute", "block", "--micro-batch", "2"]),
])
def test_a_config_plans_as_its_flags_do(config_args, flag_args, capsys):
    """local.yaml: 1M, global batch 16, length 128, depth 2 x col 2 = 4 GPUs (its layout gives --gpus)."""
    code, by_config, _ = _plan(["plan", "--config", LOCAL, *config_args, "--machine", "perlmutter", "--json",
                                "--top", "3"], capsys)
    assert code == 0
    code, by_flags, _ = _plan(["plan", "--model", "1M", "--gpus", "4", "--machine", "perlmutter", "--global-batch",
                               "16", "--seq", "128", *flag_args, "--json", "--top", "3"], capsys)
    assert code == 0
    config_rows, flag_rows = json.loads(by_config), json.loads(by_flags)
    assert len(config_rows) == 3 and config_rows == flag_rows
    assert config_rows[0]["step_time_s"] > 0


def test_a_config_that_starts_from_hugging_face_weights_plans_their_shape(tmp_path, capsys):
    """model.init_from: hf:DIR takes the shape from DIR/config.json, as axon train does (here 8B's,
    written by the engine's own exporter); layout: auto's layout_machine names the machine."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(preset("8B"))))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_from": f"hf:{tmp_path / 'hf'}", "seq_len": 4096},
                                      "layout": "auto", "layout_machine": "perlmutter",
                                      "train": {"global_batch": 64, "dtype": "bfloat16", "recompute": "block"}}))
    code, by_config, _ = _plan(["plan", "--config", str(config), "--gpus", "16", "--json", "--top", "2"], capsys)
    assert code == 0
    code, by_flags, _ = _plan(["plan", "--model", "8B", "--seq", "4096", "--gpus", "16", "--machine", "perlmutter",
                               "--global-batch", "64", "--dtype", "bfloat16", "--recompute", "block", "--json",
                               "--top", "2"], capsys)
    assert code == 0 and json.loads(by_config) == json.loads(by_flags)
    assert len(json.loads(by_flags)) == 2


def test_defaults_are_the_run_configs(capsys):
    """Flags left out and keys left out give axon train's defaults: fp32, no recompute, automatic
    micro-batches, every overlap, fp32 gradient reductions, prefetch 2, 25 MiB buckets."""
    args = build_parser().parse_args(["plan", "--model", "8B", "--gpus", "8", "--machine", "dgx-h100",
                                      "--global-batch", "8"])
    assert run_from_flags(args).setup == TrainingSetup(
        global_batch=8, seq_len=8192, micro_batch=0, dtype="float32", recompute="none", overlap=ALL_OVERLAPS,
        prefetch_distance=2, bucket_mb=25.0, grad_reduce_dtype="float32")
    assert planned_run({"model": "8B"}).setup == TrainingSetup(
        global_batch=16, seq_len=8192, micro_batch=0, dtype="float32", recompute="none", overlap=ALL_OVERLAPS,
        prefetch_distance=2, bucket_mb=25.0, grad_reduce_dtype="float32")
    code, out, _ = _plan(["plan", "--config", LOCAL, "--machine", "perlmutter", "--top", "2"], capsys)
    banner = out.splitlines()[0]
    assert code == 0 and "1M (" in banner and "on 4 x perlmutter, global batch 16 x 128 tokens, float32, " \
        "recompute none" in banner, banner
    assert "the config's layout, depth=2 col=2" in out  # where the config's own layout stands


def _fits(shape, gpus, machine, setup) -> bool:
    return any(fits_in_memory(shape, lay, machine, setup) for lay in factorizations(gpus)
               if not layout_problem(shape, lay, setup))


def test_nothing_fits_is_one_line_with_a_suggestion_that_fits(capsys):
    """8B, 64 x 8192-token sequences on one DGX H100 node in fp32: no layout fits; 16 GPUs would
    (and 8 not: the count before it), and so would each of three settings on 8."""
    code, out, err = _plan(["plan", "--model", "8B", "--gpus", "8", "--machine", "dgx-h100", "--global-batch", "64"],
                           capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert re.fullmatch(r"perfmodel plan: error: no layout of 8B on 8 x dgx-h100 fits in memory: the smallest, "
                        r"[a-z=0-9 ]+, needs \d+\.\d GiB per device, 72\.0 GiB usable; it would fit on 16 GPUs "
                        r"\(or on 8 with --recompute block, --micro-batch 1 or --dtype bfloat16\)\n", err), err
    shape, machine = preset("8B"), load_machine("dgx-h100")
    setup = TrainingSetup(global_batch=64, seq_len=8192, dtype="float32")
    assert _fits(shape, 16, machine, setup) and not _fits(shape, 8, machine, setup)
    for change in ({"recompute": "block"}, {"micro_batch": 1}, {"dtype": "bfloat16"}):
        assert _fits(shape, 8, machine, TrainingSetup(**{**setup.__dict__, **change})), change


def test_nothing_fits_405b_json_and_with_a_config(capsys):
    """The issue's case, 405B on 8 GPUs: only more GPUs help; --json gives the numbers; with
    --config the settings are written as --set keys."""
    code, out, err = _plan(["plan", "--model", "405B", "--gpus", "8", "--machine", "dgx-h100", "--global-batch", "64",
                            "--json"], capsys)
    report = json.loads(out)
    assert code == 2 and report["error"] in err and len(err.splitlines()) == 1
    gpus = report["fits_on_gpus"]
    shape, machine = preset("405B"), load_machine("dgx-h100")
    setup = TrainingSetup(global_batch=64, seq_len=8192, dtype="float32")
    assert report["smallest_need_gib"] > report["usable_gib"] == 72.0 and report["settings"] == {}
    assert _fits(shape, gpus, machine, setup) and not _fits(shape, gpus // 2, machine, setup), gpus
    code, _, err = _plan(["plan", "--config", LOCAL, "--set", "model=8B", "--set", "train.global_batch=64", "--gpus",
                          "8", "--machine", "dgx-h100"], capsys)
    assert code == 2 and err.rstrip().endswith("(or on 8 with --set train.recompute=block, --set "
                                               "train.micro_batch=1 or --set train.dtype=bfloat16)"), err


def test_layout_auto_says_what_would_fit_in_the_same_words():
    config = load_config(None, ["model=8B", "layout=auto", "train.global_batch=64"])
    with pytest.raises(ConfigError) as caught:
        choose(config, 8, load_machine("dgx-h100"))
    assert re.fullmatch(r"layout: auto found no layout of 8 ranks that fits in memory on dgx-h100: the smallest, "
                        r"[a-z=0-9 ]+, needs \d+\.\d GiB per device, 72\.0 GiB usable; it would fit on 16 ranks "
                        r"\(or on 8 with train\.recompute=block, train\.micro_batch=1 or train\.dtype=bfloat16\)",
                        str(caught.value)), caught.value


@pytest.mark.parametrize("argv, sentence", [
    (["--config", LOCAL, "--machine", "frontier", "--dtype", "bfloat16"],
     "--dtype with --config: the config gives it; override it with --set train.dtype=VALUE"),
    (["--config", LOCAL, "--machine", "frontier", "--set", "layout=auto"], "give --gpus (the config's layout is auto)"),
    (["--config", LOCAL, "--gpus", "4"], "give --machine (perlmutter, frontier, alps, dgx-h100, or a profile YAML), "
                                         "or layout_machine in the config (with layout: auto)"),
    (["--model", "8B", "--gpus", "8", "--machine", "frontier", "--global-batch", "8", "--set", "train.dtype=float32"],
     "--set overrides a run config's key: give --config too"),
    (["--config", LOCAL, "--machine", "frontier", "--set", "train.dtype=fp8"],
     "train.dtype must be 'float32' or 'bfloat16', got 'fp8'"),
])
def test_usage_mistakes_are_one_sentence(argv, sentence, capsys):
    code, out, err = _plan(["plan", *argv], capsys)
    assert code == 2 and err == f"perfmodel plan: error: {sentence}\n", err
