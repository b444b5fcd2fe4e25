"""The example training configs, axon/configs/llama3.1-{8b,70b,405b}.yaml, each as a user meets it:
its variables pointing at stand-ins (Llama 3.1's published config.json, a token file long enough
for one step), it loads to Llama 3.1's published shape and parameter count; `perfmodel plan --config`,
for the GPU count its header's sbatch line asks for (on its layout_machine), ranks first a layout
that fits; and `axon dry-run CONFIG --world N --ranks 0` plans the same layout (`layout:
auto`), builds rank 0 on the fake backend, stays within the device's memory and exits 0.

The published numbers are typed here from meta-llama/Llama-3.1-{8B,70B,405B}'s config.json and
model card, not taken from axon's presets. The six commands run at once, as subprocesses (two
cores: 405B's rank 0 holds all 126 blocks and its rehearsal alone takes about 15 s).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from axon.config import load_config
from axon.data.token_file import TokenFileWriter
from axon.spec.parameters import matmul_parameters
from axon.testing.processes import REPO, clean_env
from perfmodel.machine import load_machine

# meta-llama/Llama-3.1-*/config.json: what sets the shape (every size: 8 kv heads, vocab 128,256,
# context 131,072, llama3 RoPE scaling 8 over an 8,192 original context, theta 500,000, eps 1e-5)
PUBLISHED = {
    "8b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, intermediate_size=14336),
    "70b": dict(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, intermediate_size=28672),
    "405b": dict(num_hidden_layers=126, hidden_size=16384, num_attention_heads=128, intermediate_size=53248),
}
COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
          "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
          "initializer_range": 0.02, "max_position_embeddings": 131072, "mlp_bias": False,
          "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
          "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"},
          "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
          "vocab_size": 128256}
PARAMETERS = {"8b": 8_030_261_248, "70b": 70_553_706_496, "405b": 405_853_388_800}  # the model cards' counts
SIZES = list(PUBLISHED)


def _header(text: str) -> tuple[dict[str, str], int, str]:
    """(variable -> description, nodes, sbatch script) from a config's leading comments."""
    variables = dict(re.findall(r"^#   ([A-Z_0-9]+) +(\S.*)$", text, re.M))
    nodes, script = re.search(r"^# Submit: +CONFIG=\S+ sbatch --account=ACCOUNT --nodes=(\d+) (launch/\S+)$",
                              text, re.M).groups()
    return variables, int(nodes), script


def _path(size: str):
    return REPO / "axon" / "configs" / f"llama3.1-{size}.yaml"


def _gpus(size: str) -> tuple[int, str]:
    """The GPU count and the sbatch script the config's header submits with."""
    _, nodes, script = _header(_path(size).read_text())
    per_node = int(re.search(r"srun --ntasks-per-node=(\d+)", (REPO / script).read_text()).group(1))
    return nodes * per_node, script


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Environment variables for every config: a config.json folder per size, a token file of
    4.8M ids (one 405B step of 512 x 8192 plus 64 validation windows), a runs folder."""
    root = tmp_path_factory.mktemp("stand_ins")
    env = {"DATA": str(root / "tokens.tok"), "RUNS": str(root / "runs")}
    for size, shape in PUBLISHED.items():
        folder = root / f"Llama-3.1-{size.upper()}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**COMMON, **shape}))
        env[f"LLAMA_{size.upper()}_DIR"] = str(folder)
    with TokenFileWriter(env["DATA"], vocab=128256, tokenizer="stand-in", eos=128001) as out:
        out.add_document(np.arange(4_800_000, dtype=np.int64) * 7919 % 128000)
    return env


@pytest.fixture(scope="module")
def commands(stand_ins, monkeypatch_module):
    """size -> (plan's JSON, dry run's output): both commands of every size started at once."""
    for name, value in stand_ins.items():
        monkeypatch_module.setenv(name, value)
    env = {**clean_env(), **stand_ins, "TORCH_CPP_LOG_LEVEL": "ERROR"}
    started = {}
    for size in SIZES:
        gpus, _ = _gpus(size)
        plan = [sys.executable, "-m", "perfmodel", "plan", "--config", str(_path(size)), "--gpus", str(gpus),
                "--top", "4", "--json"]
        dry = [sys.executable, "-m", "axon", "dry-run", str(_path(size)), "--world", str(gpus), "--ranks", "0",
               "--jobs", "1"]
        started[size] = [subprocess.Popen(cmd, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT) for cmd in (plan, dry)]
    done = {}
    try:
        for size, procs in started.items():
            outs = [p.communicate(timeout=240)[0] for p in procs]
            for p, out in zip(procs, outs):
                assert p.returncode == 0, f"{size}: {p.args} exited {p.returncode}:\n{out}"
            done[size] = (json.loads(outs[0]), outs[1])
    finally:
        for procs in started.values():
            for p in procs:
                p.kill() if p.poll() is None else None
    return done


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("size", SIZES)
def test_example_config_loads_plans_and_dry_runs(size, stand_ins, commands):
    text = _path(size).read_text()
    variables, _, script = _header(text)
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert set(variables) == set(re.findall(r"\$\{(\w+)\}", body)), "the header names every variable the config reads"

    config = load_config(_path(size))
    m, published = config.model, PUBLISHED[size]
    assert (m.layers, m.hidden, m.heads, m.ffn) == (published["num_hidden_layers"], published["hidden_size"],
                                                    published["num_attention_heads"], published["intermediate_size"])
    assert (m.kv_heads, m.vocab, m.max_positions, m.rope_theta, m.rope_scaling_factor) == (8, 128256, 131072, 5e5, 8.0)
    assert m.seq_len == 8192 and matmul_parameters(m) + m.vocab * m.hidden == PARAMETERS[size]
    t = config.train
    assert config.init_from == f"hf:{stand_ins[f'LLAMA_{size.upper()}_DIR']}" and t.dtype == "bfloat16"
    assert t.resume == "latest" and t.checkpoint_every > 0 and t.final_checkpoint
    assert config.data.source == stand_ins["DATA"] and config.data.validation_sequences > 0 and t.eval_every > 0
    assert config.out_dir == f"{stand_ins['RUNS']}/llama3.1-{size}" and 0 < t.warmup_steps < t.steps
    assert config.layout_auto and script == f"launch/{config.layout_machine}.sbatch"

    # plan: the fastest layout of the header's GPU count fits; the dry run's layout: auto (the engine
    # reading the same file) picks it
    gpus, _ = _gpus(size)
    ranked, dry = commands[size]
    best = ranked[0]
    assert best["fits"], f"{size}: the fastest layout on {gpus} GPUs does not fit: {best['why_not']}"
    sizes = " x ".join(f"{axis} {best['layout'][axis]}" for axis in ("data", "pipe", "depth", "row", "col"))
    assert f"on {gpus} ranks, layout: auto on {config.layout_machine} -> {sizes} " in dry, dry

    # dry run of rank 0: builds on meta, strict NCCL ok, perfmodel's collectives, within the device's memory
    assert "strict NCCL: ok" in dry and "every parameter on the meta device: True" in dry
    assert "inventory vs perfmodel: every (op, axis, bytes) as often" in dry
    machine = load_machine(config.layout_machine)
    usable = machine.memory_gb * machine.usable_memory_fraction  # GiB, as perfmodel counts them
    verdict = re.search(rf"^rank 0 \(stage 0\): peak ([\d.]+) GiB of ([\d.]+) GiB usable on "
                        rf"{config.layout_machine}: fits$", dry, re.M)
    assert verdict, dry
    peak, of = map(float, verdict.groups())
    assert peak < of == pytest.approx(usable, abs=0.05), dry
    total = float(re.search(r"^  total +([\d.]+) ", dry, re.M).group(1))
    print(f"llama3.1-{size}: {gpus} x {config.layout_machine}: {sizes}, {best['step_time_s']:.1f} s a step "
          f"predicted, {best['memory_gb_per_gpu']:.1f} GiB; rank 0 {total:.1f} GiB in the dry run")


def test_first_run_page_quotes_the_8b_plan(commands):
    """docs/first-run.md quotes the 8B config's plan on 16 A100s: the figures must be today's."""
    best = commands["8b"][0][0]
    lay = best["layout"]
    layout = " ".join(f"{axis}={lay[axis]}" for axis in ("data", "pipe", "depth", "row", "col") if lay[axis] > 1)
    layout += f" v={lay['virtual_stages']}" if lay["virtual_stages"] > 1 else ""
    page = " ".join((REPO / "docs" / "first-run.md").read_text().split())
    step = f"{best['step_time_s']:.1f}"
    for claim in (f"best is `{layout}`", f"{step} s a step, {100 * best['mfu']:.1f}% MFU, "
                  f"{best['memory_gb_per_gpu']:.1f} GiB", f"perfmodel says {step} s on 16 A100s"):
        assert claim in page, f"update docs/first-run.md's plan figures: {claim!r}"
