"""train.grad_reduce_dtype: bfloat16 sends the data all-reduces and the depth reduce-scatters
of gradients as bf16 (half the bytes) and sums them back into fp32 gradients.

One spawn of 4 gloo ranks (data=2 x depth=2) runs every case: the reductions on their own
against sums computed here, then 20 training steps each with fp32 and bf16 reductions, in
fp32 and bf16 compute, overlap on and off.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from axon.planning.auto_layout import training_setup
from axon.config import ConfigError, build_config
from axon.parallel.grid import Grid
from axon.parallel.comm import all_reduce, all_reduce_start, scatter_block_grad, scatter_block_grad_start
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.spec.training import TrainingSetup
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 96, "vocab": 128, "seq_len": 16}
LAYOUT = Layout(data=2, depth=2)  # default order, depth inside data: depth peers 0-1, data peers 0-2
STEPS = 20
SWITCHES = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")
# (compute dtype, reduction dtype, overlap on)
CASES = [
    ("float32", "float32", True),
    ("float32", "bfloat16", True),
    ("bfloat16", "float32", True),
    ("bfloat16", "bfloat16", True),
    ("bfloat16", "bfloat16", False),
]
SHARD = 36  # a 10 x 7 block padded to 72 over depth 2


def config_for(dtype: str, reduce_dtype: str, overlap: bool):
    return build_config({
        "model": MODEL, "layout": LAYOUT.sizes(),
        # 2 micro-batches per shard: gradients accumulate across them before the reductions
        "train": {"steps": STEPS, "global_batch": 8, "micro_batch": 1, "lr": 1e-3, "seed": 11, "dtype": dtype,
                  "grad_reduce_dtype": reduce_dtype, "trace_steps": 1, "schedule": "constant"},
        "overlap": {**dict.fromkeys(SWITCHES, overlap), "bucket_mb": 0.02}})  # several buckets


def block(rank: int) -> torch.Tensor:
    """A rank's fp32 gradient block, with values bf16 cannot hold exactly."""
    return torch.randn(10, 7, generator=torch.Generator().manual_seed(100 + rank)) * (1 + rank)


def reductions_alone(rank: int) -> dict:
    """The reductions themselves, synchronous and started-then-waited, sent as bf16."""
    grid = Grid(LAYOUT, rank)
    data, depth = grid.axis("data"), grid.axis("depth")
    grid.trace.enabled = True
    out = {"scatter": scatter_block_grad(block(rank), SHARD, depth, torch.bfloat16),
           "all_reduce": all_reduce(block(rank).reshape(-1), data, wire_dtype=torch.bfloat16)}
    shard, handle = scatter_block_grad_start(block(rank), SHARD, depth, torch.bfloat16)
    buffer = block(rank).reshape(-1)
    bucket_handle = all_reduce_start(buffer, data, wire_dtype=torch.bfloat16)
    handle.wait()
    bucket_handle.wait()
    out.update(scatter_async=shard, all_reduce_async=buffer)
    out["events"] = Counter((e.op, e.axis, e.bytes) for e in grid.trace.take())
    grid.destroy()
    return out


def run_cases(rank, world, cases):
    results = {"alone": reductions_alone(rank)}
    for dtype, reduce_dtype, overlap in cases:
        grid = Grid(LAYOUT, rank)
        trainer = Trainer(config_for(dtype, reduce_dtype, overlap), grid, torch.device("cpu"))
        losses = [trainer.step(step)["loss"] for step in range(STEPS)]
        buckets = {(b.axis.name, b.buffer.numel()) for b in trainer.buckets.buckets}
        traced = Counter((e.op, e.axis, e.bytes) for e in trainer.traced_events)
        results[(dtype, reduce_dtype, overlap)] = (losses, traced, buckets)
        grid.destroy()
    return results


@pytest.fixture(scope="module")
def rank0():
    return run_distributed(4, run_cases, CASES)[0]


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def test_reductions_send_bf16_and_sum_into_fp32(rank0):
    out = rank0["alone"]
    # Two ranks' bf16 copies summed once and rounded to bf16 (gloo and NCCL alike for two ranks).
    depth_sum = (bf16(block(0)) + bf16(block(1))).reshape(-1)
    expected_shard = bf16(F.pad(depth_sum, (0, 2 * SHARD - depth_sum.numel()))[:SHARD])  # rank 0: depth 0
    expected_sum = bf16(bf16(block(0)) + bf16(block(2))).reshape(-1)
    for key, expected, exact in (("scatter", expected_shard, (block(0) + block(1)).reshape(-1)[:SHARD]),
                                 ("scatter_async", expected_shard, (block(0) + block(1)).reshape(-1)[:SHARD]),
                                 ("all_reduce", expected_sum, (block(0) + block(2)).reshape(-1)),
                                 ("all_reduce_async", expected_sum, (block(0) + block(2)).reshape(-1))):
        assert out[key].dtype == torch.float32, key
        torch.testing.assert_close(out[key], expected, rtol=0, atol=0, msg=key)
        assert (out[key] - exact).abs().max() > 0, f"{key}: the fp32 sum, so the wire was not bf16"
        torch.testing.assert_close(out[key], exact, rtol=1e-2, atol=1e-2, msg=key)
    # The trace counts the bf16 bytes: 72 padded elements x 2 bytes, 70 x 2 bytes.
    assert out["events"] == Counter({("reduce_scatter", "depth", 144): 2, ("all_reduce", "data", 140): 2})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_reduction_tracks_fp32_for_20_steps(rank0, dtype):
    reference, reduced = rank0[(dtype, "float32", True)][0], rank0[(dtype, "bfloat16", True)][0]
    relative = [abs(b - a) / a for a, b in zip(reference, reduced)]
    print(f"{dtype} compute, fp32 vs bf16 reductions: max relative loss difference {max(relative):.2e}")
    assert len(relative) == STEPS and reference[-1] < reference[0] - 0.05  # it trained
    assert max(relative) < 1e-2
    assert reference != reduced  # the bf16 path really ran


def test_overlap_does_not_change_bf16_reduction(rank0):
    # ORS / DP overlap on and off issue the same bf16 collectives: identical losses.
    assert rank0[("bfloat16", "bfloat16", True)][0] == rank0[("bfloat16", "bfloat16", False)][0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trace_records_half_the_bytes_of_gradient_reductions(rank0, dtype):
    _, fp32_trace, buckets = rank0[(dtype, "float32", True)]
    _, bf16_trace, _ = rank0[(dtype, "bfloat16", True)]
    gradient_all_reduces = {(axis, numel * 4) for axis, numel in buckets}
    assert {axis for axis, _ in gradient_all_reduces} == {"data", "data+depth"}
    expected = Counter()
    for (op, axis, nbytes), count in fp32_trace.items():
        halved = ((op == "reduce_scatter" and axis == "depth")
                  or (op == "all_reduce" and (axis, nbytes) in gradient_all_reduces))
        expected[(op, axis, nbytes // 2 if halved else nbytes)] += count
    assert bf16_trace == expected  # everything else (activations, weights, loss sums) unchanged
    scattered = lambda trace: sum(n * c for (op, _, n), c in trace.items() if op == "reduce_scatter")  # noqa: E731
    bucket_bytes = sum(nbytes for _, nbytes in gradient_all_reduces)
    print(f"{dtype} compute, rank 0, one step: depth reduce-scatters {scattered(fp32_trace)} -> "
          f"{scattered(bf16_trace)} bytes, bucket all-reduces {bucket_bytes} -> {bucket_bytes // 2} bytes")
    assert scattered(bf16_trace) * 2 == scattered(fp32_trace) > 0


def test_config_and_perfmodel_setup_carry_the_option():
    assert build_config({}).train.grad_reduce_dtype == "float32"
    config = build_config({"train": {"grad_reduce_dtype": "bfloat16"}})
    assert training_setup(config).grad_reduce_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="train.grad_reduce_dtype must be 'float32' or 'bfloat16', got 'float16'"):
        build_config({"train": {"grad_reduce_dtype": "float16"}})
    with pytest.raises(ValueError, match="grad_reduce_dtype"):
        TrainingSetup(global_batch=8, seq_len=16, grad_reduce_dtype="fp8")


def test_bf16_wire_copies_live_until_their_wait():
    """DESIGN §10: a tensor an asynchronous collective uses must not return to the allocator
    before the wait. The bf16 copies exist only for the wire, so the traced handle must hold
    them; after the wait they are released and the sum is in the fp32 tensor."""
    import torch.distributed as dist

    from axon.parallel.trace import Axis, CommTrace

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        axis = Axis("data", dist.group.WORLD, 1, CommTrace())  # a real group, so the wire is cast
        buffer = torch.tensor([1.0, 2.0 ** -9 + 1.0, 3.0])  # the middle value is not a bf16 number
        handle = all_reduce_start(buffer, axis, wire_dtype=torch.bfloat16)
        (wire,) = handle.handle.keep_alive
        assert wire.dtype == torch.bfloat16 and wire is handle.wire
        handle.wait()
        assert handle.handle.keep_alive == () and handle.wire is None
        assert buffer.tolist() == [1.0, 1.0, 3.0]  # rounded through bf16 on the wire, back in fp32

        dblock = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        shard, handle = scatter_block_grad_start(dblock, 6, axis, wire_dtype=torch.bfloat16)
        full, narrow = handle.handle.keep_alive
        assert full.dtype == narrow.dtype == torch.bfloat16 and narrow is handle.wire
        assert shard.dtype == torch.float32
        handle.wait()
        assert handle.handle.keep_alive == () and shard.tolist() == dblock.reshape(-1).tolist()
    finally:
        dist.destroy_process_group()
