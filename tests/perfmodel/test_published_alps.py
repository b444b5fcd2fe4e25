"""The Alps (GH200) rows of the published-results benchmark: the figures are the sources' numbers,
and Megatron-LM's 2025 TFLOP/s convention turns into tokens/s by hand-checked arithmetic.

The within-15% check of every row, the Alps ones included, is tests/perfmodel/test_published.py."""

from __future__ import annotations

import pytest

from perfmodel.published import LLAMA32_3B, PUBLISHED, compare, megatron_2025_tokens_per_gpu
from axon.spec.flops import flops_per_token
from axon.spec.shapes import preset


def test_megatron_2025_tflops_become_tokens_by_hand():
    # Llama 3.2 3B at seq 8192: 12 * 28 * 3072^2 = 3,170,893,824;
    # x (1 + 8/24 + 8192/3072) + 1.5 * 8192/3072 + 128256/(2 * 28 * 3072) = 4 + 4 + 0.7455357 = 8.7455357
    # -> 27,731,165,184 FLOPs per token; 505 TFLOP/s -> 18,210.5 tokens/s.
    assert 1e12 / megatron_2025_tokens_per_gpu(1, LLAMA32_3B, 8192) == pytest.approx(27_731_165_184, rel=1e-9)
    assert megatron_2025_tokens_per_gpu(505, LLAMA32_3B, 8192) == pytest.approx(18_210.5, abs=0.5)
    # Llama 3.1 8B at seq 8192: 12 * 32 * 4096^2 = 6,442,450,944 x (3.25 + 5.25 + 0.4892578) -> 5.79129e10 per token.
    assert 1e12 / megatron_2025_tokens_per_gpu(1, preset("8B"), 8192) == pytest.approx(5.79129e10, rel=1e-5)


@pytest.mark.parametrize("shape,seq", [(LLAMA32_3B, 8192), (preset("8B"), 8192), (preset("8B"), 4096)])
def test_megatron_2025_convention_is_perfmodels(shape, seq):
    # Both count 3 passes of every matmul incl. the LM head, non-causal scores, no recomputation;
    # perfmodel's N also holds the norm gains (a few 1e-5 of the total).
    assert 1e12 / megatron_2025_tokens_per_gpu(1, shape, seq) == pytest.approx(flops_per_token(shape, seq), rel=1e-4)


def test_alps_rows_are_the_sources_numbers():
    alps = {(row.model_name, row.layout.world_size, row.micro_batch): row for row in PUBLISHED if row.machine == "alps"}
    assert round(alps[("Llama 3.1 8B", 256, 1)].tokens_per_gpu) == 8290  # PR #33, TP 1, seq 8192
    assert round(alps[("Llama 3.1 8B", 256, 4)].tokens_per_gpu) == 8000  # PR #33 baseline, TP 2, seq 4096
    assert round(alps[("Llama 3.2 3B", 4, 1)].tokens_per_gpu) == 18211  # PR #10, 505 TFLOP/s, 1 node
    assert round(alps[("Llama 3.2 3B", 32, 2)].tokens_per_gpu) == 17778  # PR #10, 493 TFLOP/s, 8 nodes
    assert alps[("Llama 3.1 8B", 256, 4)].layout.sizes()["row"] == 2
    assert all(row.grad_reduce_dtype == "bfloat16" and row.recompute == "none" for row in alps.values())


def test_bf16_gradient_reduction_is_priced():
    # The 8,290 row at data=256 over Slingshot: halving the gradient bytes must shorten the data-parallel time.
    row = next(r for r in PUBLISHED if r.machine == "alps" and r.layout.world_size == 256 and r.micro_batch == 1)
    bf16 = compare(row)
    fp32 = compare(type(row)(**{**row.__dict__, "grad_reduce_dtype": "float32"}))
    assert bf16["breakdown"]["data_comm"] < fp32["breakdown"]["data_comm"]
    assert bf16["predicted_tokens_per_gpu"] > fp32["predicted_tokens_per_gpu"]
