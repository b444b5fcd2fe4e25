"""bfloat16 compute with fp32 master weights: close to fp32, and the same on every layout."""

from __future__ import annotations

import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}


def config_for(layout: Layout, dtype: str):
    return build_config({"model": MODEL, "layout": {a: getattr(layout, a) for a in ("data", "depth", "row", "col")},
                         "train": {"steps": 6, "global_batch": 8, "lr": 3e-3, "seed": 9, "dtype": dtype}})


def train(rank, world, layout, dtype):
    grid = Grid(layout, rank)
    trainer = Trainer(config_for(layout, dtype), grid, torch.device("cpu"))
    losses = [m["loss"] for m in trainer.fit()]
    dtypes = {str(p.dtype) for p in trainer.model.parameters()}
    dtypes |= {str(v.dtype) for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"}
    grid.destroy()
    return losses, dtypes


def test_bfloat16_tracks_float32_with_fp32_master_state():
    fp32, _ = train(0, 1, Layout(), "float32")
    bf16, dtypes = train(0, 1, Layout(), "bfloat16")
    assert dtypes == {"torch.float32"}  # parameters and AdamW moments stay fp32
    assert bf16 != fp32  # it really computed in bf16...
    assert all(abs(a - b) / b < 2e-2 for a, b in zip(bf16, fp32))  # ...and stays close
    assert bf16[-1] < bf16[0] - 0.1


def run_layouts(rank, world, layouts):
    return [train(rank, world, layout, "bfloat16")[0] for layout in layouts]


def test_bfloat16_on_every_kind_of_axis_matches_one_process():
    reference, _ = train(0, 1, Layout(), "bfloat16")
    layouts = [Layout(depth=2, col=2), Layout(row=2, col=2), Layout(data=2, depth=2)]
    for layout, losses in zip(layouts, run_distributed(4, run_layouts, layouts)[0]):
        # bf16 rounds differently when sums are split differently: agreement to bf16 precision
        assert all(abs(a - b) / b < 1e-2 for a, b in zip(losses, reference)), (layout, losses, reference)


def test_bf16_weight_gradients_leave_the_gemm_in_fp32():
    """dW of a bf16 linear layer equals an fp32 computation from the same bf16 activations and
    output gradients (the products summed in fp32, never rounded to bf16)."""
    from axon.parallel.grid import Grid
    from axon.parallel.linear import TensorParallelLinear
    from axon.spec.layout import Layout

    torch.manual_seed(0)
    layer = TensorParallelLinear(Grid(Layout(), 0), 96, 80, "normal", 0.02)
    torch.nn.init.normal_(layer.weight, std=0.02)
    x = torch.randn(4, 33, 96).bfloat16().requires_grad_()
    dy = torch.randn(4, 33, 80).bfloat16()
    layer(x).backward(dy)
    exact = (dy.double().reshape(-1, 80).t() @ x.detach().double().reshape(-1, 96)).reshape(-1)
    fp32 = (dy.float().reshape(-1, 80).t() @ x.detach().float().reshape(-1, 96)).reshape(-1)
    rounded = (dy.reshape(-1, 80).t() @ x.detach().reshape(-1, 96)).float().reshape(-1)
    assert layer.weight.grad.dtype == torch.float32
    assert torch.allclose(layer.weight.grad, fp32, rtol=1e-6, atol=1e-6)
    error = lambda g: ((g.double() - exact).norm() / exact.norm()).item()  # noqa: E731
    assert error(layer.weight.grad) < 1e-6 < 1e-3 < error(rounded)  # bf16 output rounding: ~2e-3


def test_a_gpu_without_the_fp32_output_gemm_is_warned_about(monkeypatch):
    from axon.kernels import gemm

    assert gemm.fp32_output_gemm_missing("cpu", torch.bfloat16) is None  # a CPU widens either way
    monkeypatch.setattr(gemm, "_has_fp32_output_mm", lambda device_type, dtype: False)
    assert gemm.fp32_output_gemm_missing("cuda", torch.float32) is None
    warning = gemm.fp32_output_gemm_missing("cuda", torch.bfloat16)
    assert "torch >= 2.8" in warning and "bfloat16" in warning and torch.__version__ in warning
    monkeypatch.setattr(gemm, "_has_fp32_output_mm", lambda device_type, dtype: True)
    assert gemm.fp32_output_gemm_missing("cuda", torch.bfloat16) is None
