"""GEMM tuning (axon.kernels.gemm / axon.kernels.tune): every candidate computes the same product, the
tuner keeps the fastest, caches it, bounds its copies, and training with it matches training without."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.linear import TensorParallelLinear
from axon.runtime.trainer import Trainer
from axon.kernels.gemm import CANDIDATES, LAYOUT_MODES, in_layout, layout_of, run_candidate
from axon.kernels.tune import GemmTuner
from axon.spec.layout import Layout

ODD_SHAPES = [(7, 13, 5), (33, 17, 65), (3, 130, 9)]  # M, N, K
MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}


def operands(m, n, k, held, dtype):
    generator = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    return in_layout(a, held[0]), in_layout(b, held[1])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("held", LAYOUT_MODES)
def test_every_candidate_computes_the_product(dtype, tolerance, held):
    for m, n, k in ODD_SHAPES:
        a, b = operands(m, n, k, held, dtype)
        assert layout_of(a) + layout_of(b) == held
        exact = a.double() @ b.double()  # the product of the very same (rounded) inputs
        library = torch.matmul(a, b).double()
        scale = exact.abs().max().item()
        for name in CANDIDATES:
            c = run_candidate(name, a, b)
            assert c.shape == (m, n) and c.dtype == dtype and c.is_contiguous(), name
            # bf16 rounds the output itself (8 bits), so its bound is the output's precision.
            assert (c.double() - exact).abs().max().item() <= tolerance * scale, (name, held, (m, n, k))
            assert (c.double() - library).abs().max().item() <= tolerance * scale, (name, held, (m, n, k))


def test_tuner_keeps_the_fastest_and_times_each_key_once(monkeypatch):
    tuner, seen = GemmTuner(repeats=3), []
    tuner.on_choice = seen.append
    a, b = operands(33, 17, 65, "NT", torch.float32)
    first = tuner.matmul(a, b, "forward")
    monkeypatch.setattr(tuner, "time_candidates", lambda *args: pytest.fail("a known key was timed again"))
    second = tuner.matmul(a, b, "forward")
    assert torch.equal(first, second)
    (choice,) = tuner.choices
    assert seen == [choice] and choice.held == "NT" and choice.shape == (33, 17, 65) and choice.source == "timed"
    assert set(choice.candidates) == set(CANDIDATES) and all(t > 0 for t in choice.candidates.values())
    fastest = min(choice.candidates, key=choice.candidates.get)
    if choice.best != fastest:  # kept as held: the fastest was within min_gain of it
        assert choice.best == "NT" and choice.candidates["NT"] <= choice.candidates[fastest] * (1 + tuner.min_gain)
    assert torch.equal(second, run_candidate(choice.best, a, b))
    assert choice.speedup() >= 1.0 and choice.best in choice.describe()


def test_a_mode_replaces_the_held_one_only_when_clearly_faster():
    tuner = GemmTuner(min_gain=0.05)
    assert tuner.pick({"NT": 1.0, "NN": 0.97, "TN": 1.2}, "NT") == "NT"  # 3% faster: noise, no copy
    assert tuner.pick({"NT": 1.0, "NN": 0.90, "TN": 0.5}, "NT") == "TN"
    assert tuner.pick({"NN": 0.97, "TN": 0.98}, "NT") == "NN"  # the held mode not among the allowed candidates


def test_cache_survives_a_restart(tmp_path, monkeypatch):
    path = tmp_path / "gemm_tuning.json"
    a, b = operands(7, 13, 5, "TN", torch.float32)
    first = GemmTuner(cache_path=path, repeats=3)
    first.matmul(a, b)
    first.matmul(a.contiguous(), b)  # the same shape held NN is another key
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 2
    key = first.key(a, b, "TN")
    assert torch.__version__ in key and "7x13x5" in key and entries[key]["best"] == first.choices[0].best

    restarted = GemmTuner(cache_path=path)
    monkeypatch.setattr(restarted, "time_candidates", lambda *args: pytest.fail("a cached key was timed"))
    restarted.matmul(a, b)
    (choice,) = restarted.choices
    assert choice.source == "cache" and choice.best == first.choices[0].best


def test_copies_over_the_limit_are_skipped_and_the_peak_reported():
    m, n, k = 64, 48, 32
    a, b = operands(m, n, k, "NN", torch.float32)
    a_copy, b_copy, c_transposed = m * k * 4, k * n * 4, m * n * 4  # 8192, 6144, 12288 bytes
    tuner = GemmTuner(max_copy_bytes=a_copy, repeats=2)
    tuner.matmul(a, b)
    (choice,) = tuner.choices
    assert set(choice.candidates) == {"NN", "TN", "NT"}
    assert choice.skipped == {"TT": a_copy + b_copy, "transposed": c_transposed}
    assert tuner.peak_extra_bytes == a_copy  # the largest copy any timed candidate made

    unbounded = GemmTuner(repeats=2)
    unbounded.matmul(a, b)
    assert unbounded.peak_extra_bytes == a_copy + b_copy

    nothing = GemmTuner(max_copy_bytes=0)
    nothing.matmul(a, b)
    assert nothing.choices[0].best == "NN" and nothing.choices[0].candidates == {} and nothing.peak_extra_bytes == 0


def train_losses(tuner: GemmTuner | None) -> list[float]:
    config = build_config({"model": MODEL, "layout": {},
                           "train": {"steps": 5, "global_batch": 8, "micro_batch": 4, "lr": 1e-3, "seed": 7,
                                     "grad_clip": 0.5}})
    grid = Grid(Layout(), 0)
    trainer = Trainer(config, grid, torch.device("cpu"))
    for module in trainer.model.modules():
        if isinstance(module, TensorParallelLinear):
            module.gemm_tuner = tuner
    losses = [m["loss"] for m in trainer.fit()]
    grid.destroy()
    return losses


def test_training_with_tuning_matches_training_without():
    reference = train_losses(None)
    assert reference[-1] < reference[0]  # it trained
    tuned = GemmTuner(repeats=2)
    # Each candidate forced on every GEMM, then the tuner's own choices.
    runs = {name: GemmTuner(candidates=(name,)) for name in CANDIDATES} | {"tuned": tuned}
    for name, tuner in runs.items():
        losses = train_losses(tuner)
        worst = max(abs(x - r) / abs(r) for x, r in zip(losses, reference))
        assert worst < 1e-6, f"{name}: loss differs by {worst:.2e} relative"
    assert {(c.label, c.held) for c in tuned.choices} >= {("forward", "NT"), ("dX", "NN"), ("dW", "TN")}
    forced = runs["transposed"]
    assert {c.best for c in forced.choices} == {"transposed"} and forced.peak_extra_bytes > 0


def test_train_gemm_tuning_attaches_one_tuner_and_keeps_its_cache(tmp_path):
    config = build_config({"model": MODEL, "layout": {}, "out_dir": str(tmp_path),
                           "train": {"steps": 2, "global_batch": 8, "micro_batch": 4, "lr": 1e-3, "seed": 7,
                                     "grad_clip": 0.5, "gemm_tuning": True}})
    grid = Grid(Layout(), 0)
    trainer = Trainer(config, grid, torch.device("cpu"))
    linears = [m for m in trainer.model.modules() if isinstance(m, TensorParallelLinear)]
    assert linears and all(m.gemm_tuner is trainer.gemm_tuner for m in linears)
    losses = [m["loss"] for m in trainer.fit()]
    grid.destroy()
    reference = train_losses(None)[:2]
    assert max(abs(x - r) / abs(r) for x, r in zip(losses, reference)) < 1e-6
    cached = json.loads((tmp_path / "gemm_tuning.json").read_text())["entries"]
    assert len(cached) == len(trainer.gemm_tuner.choices) > 0  # every timed shape is kept for a restart


def test_gemm_tuning_auto_tunes_on_gpus_only():
    from axon.config import ConfigError
    from axon.runtime.trainer import gemm_tuning_enabled

    def train(value):
        return build_config({"model": MODEL, "train": {"gemm_tuning": value}}).train

    assert build_config({"model": MODEL}).train.gemm_tuning == "auto"
    assert gemm_tuning_enabled(train("auto"), torch.device("cuda", 0))  # ROCm devices are "cuda" too
    assert not gemm_tuning_enabled(train("auto"), torch.device("cpu"))
    assert gemm_tuning_enabled(train(True), torch.device("cpu"))
    assert not gemm_tuning_enabled(train(False), torch.device("cuda", 0))
    with pytest.raises(ConfigError, match=r"train.gemm_tuning must be true, false or 'auto', got 'yes'"):
        train("yes")


def run_cli(*args) -> list[dict]:
    command = [sys.executable, "-m", "axon.kernels", "tune", *args, "--json", "--repeats", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("dtype, layout", [("float32", "NN"), ("bfloat16", "NT")])
def test_cli_names_the_fastest_candidate(dtype, layout):
    results = run_cli("--shapes", "7x13x5,24x8x40", "--dtype", dtype, "--layout", layout)
    assert [r["shape"] for r in results] == [[7, 13, 5], [24, 8, 40]]
    for r in results:
        assert set(r["candidates"]) == set(CANDIDATES)
        assert all(isinstance(t, float) and t > 0 for t in r["candidates"].values())
        assert r["best"] == min(r["candidates"], key=r["candidates"].get)
