"""perfmodel prices GEMMs by shape, attention by SDPA's curve and memory-bound work by bytes:
each checked against hand-computed values. Torch-free."""

from __future__ import annotations

import math

import pytest

from axon.spec.layout import Layout
from perfmodel.machine import ProfileError, machine_from_dict, machine_to_dict
from axon.spec.shapes import ModelShape, preset
from perfmodel.predict import GemmClock, predict
from axon.spec.training import TrainingSetup
from perfmodel.workload import Gemm, micro_batch_work, step_collectives

BASE = dict(name="hand", devices_per_node=4, memory_gb=40, peak_tflops={"float32": 10, "bfloat16": 100},
            memory_bandwidth_gbs=1000, intra_node={"bandwidth_gbs": 100, "latency_us": 2},
            inter_node={"bandwidth_gbs": 25, "latency_us": 5}, nics_per_node=4,
            gemm_efficiency=[[1e6, 0.2], [1e8, 0.6]], overlap_efficiency=1.0, op_overhead_us=0)
BY_DIM = {16: [[1e6, 0.1], [1e8, 0.3]], 256: [[1e6, 0.4], [1e8, 0.8]]}


def test_linear_gemms_carry_the_layouts_local_shapes():
    tiny = preset("tiny")  # hidden 64, 4 heads of 16, 2 kv heads (kv dim 32), ffn 192, vocab 256, 2 layers
    work = micro_batch_work(tiny, Layout(row=2, col=4), micro=3, seq=64, dtype="float32", recompute=False,
                            stage_layers=2, first=True, last=True)
    tokens = 3 * 64
    linear = [(g.m, g.n, g.k, g.phase, g.kind, g.count) for g in work.gemms if g.kind != "attention"]
    # wq is "normal": in = 64 / col 4 = 16, out = 64 / row 2 = 32.
    assert linear[:3] == [(tokens, 32, 16, "forward", "linear", 2),  # Y = X W^T: [tokens, out] from K = in
                          (tokens, 16, 32, "backward", "linear", 2),  # dX = dY W: [tokens, in] from K = out
                          (32, 16, tokens, "backward", "dw", 2)]  # dW = dY^T X: [out, in] from K = tokens
    # wo is "transposed": in = 64 / row 2 = 32, out = 64 / col 4 = 16; w2: in = 192 / row 2, out = 64 / col 4.
    assert linear[9] == (tokens, 16, 32, "forward", "linear", 2)
    assert linear[18] == (tokens, 16, 96, "forward", "linear", 2)
    assert linear[21] == (tokens, 128, 16, "forward", "linear", 1)  # LM head ("normal"): out = vocab 256 / row 2
    assert sum(g.flops * g.count for g in work.gemms if g.kind != "attention") == pytest.approx(
        3 * 2 * tokens * (2 * (16 * 32 + 2 * 16 * 16 + 32 * 16 + 3 * 16 * 96) + 16 * 128))


def test_attention_is_one_call_per_layer_of_all_local_heads():
    tiny = preset("tiny")
    work = micro_batch_work(tiny, Layout(row=2), micro=3, seq=64, dtype="float32", recompute=True,
                            stage_layers=2, first=True, last=True)
    calls = [g for g in work.gemms if g.kind == "attention"]
    # forward, recompute (backward), backward: 4 b s^2 d per head forward, twice that backward
    assert [(g.phase, g.count, g.flops) for g in calls] == [
        ("forward", 2, 4.0 * 3 * 64 * 64 * 16 * 2), ("backward", 2, 4.0 * 3 * 64 * 64 * 16 * 2),
        ("backward", 2, 8.0 * 3 * 64 * 64 * 16 * 2)]


def test_gemm_efficiency_by_smallest_dimension_interpolates_in_log_dimension():
    clock = GemmClock(machine_from_dict({**BASE, "gemm_efficiency_by_min_dim": BY_DIM}), "float32")
    # at 1e7 FLOPs the curves give 0.2 (d 16) and 0.6 (d 256); 64 is halfway in log(d)
    assert clock.efficiency(1e7, 16) == pytest.approx(0.2)
    assert clock.efficiency(1e7, 64) == pytest.approx(0.4)
    assert clock.efficiency(1e7, 8) == pytest.approx(0.2) and clock.efficiency(1e7, 4096) == pytest.approx(0.6)
    skinny, square = Gemm(1000, 1000, 16, "forward"), Gemm(252, 252, 252, "forward")  # about 3.2e7 FLOPs each
    assert clock.gemm_seconds(skinny) == pytest.approx(skinny.flops / (10e12 * (0.1 + 0.2 * math.log10(3.2e7 / 1e6) / 2)))
    assert clock.gemm_seconds(skinny) > 2 * clock.gemm_seconds(square)


def test_an_old_profile_prices_gemms_by_flops_alone():
    clock = GemmClock(machine_from_dict(BASE), "float32")
    assert clock.efficiency(1e7, 8) == pytest.approx(0.4) == clock.efficiency(1e7, 4096)
    assert clock.gemm_seconds(Gemm(100, 100, 500, "forward", count=3)) == pytest.approx(3 * 1e7 / (10e12 * 0.4))


def _predict_tiny(extra: dict, layout=Layout(), recompute="none"):
    tiny = preset("tiny")
    setup = TrainingSetup(global_batch=4, seq_len=64, dtype="float32", recompute=recompute, overlap=())
    return predict(tiny, layout, machine_from_dict({**BASE, **extra}), setup)


def test_attention_is_priced_by_its_own_curves():
    p = _predict_tiny({"attention_efficiency": {"forward": [[1e3, 0.5]], "backward": [[1e3, 0.25]]}})
    forward = 4.0 * 4 * 64 * 64 * 16 * 4 * 2  # 4 b s^2 d heads layers
    assert p.breakdown["attention"] == pytest.approx(forward / (10e12 * 0.5) + 2 * forward / (10e12 * 0.25))


def test_memory_bound_work_moves_its_bytes_at_bandwidth_times_efficiency():
    kinds = ("norm", "rope", "swiglu", "residual", "loss", "optimizer")
    p = _predict_tiny({"memory_efficiency": {k: [[1.0, 0.5]] for k in kinds}})
    tokens, h, ffn, vocab, layers = 4 * 64, 64, 192, 256, 2
    qk = (4 + 2) * 16
    # bytes per element (forward + backward): norm 2+3, rope 2+2, swiglu 3+5, residual 3+1, loss 2+2 (fp32)
    per_layer = 4 * tokens * (2 * h * 5 + qk * 4 + ffn * 8 + 2 * h * 4)
    moved = layers * per_layer + 4 * tokens * h * 5 + 4 * tokens * vocab * 4
    assert p.breakdown["elementwise"] == pytest.approx(moved / (1000e9 * 0.5))
    params = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 192) + 256 * 64 * 2 + 5 * 64
    assert p.breakdown["optimizer"] == pytest.approx(40 * params / (1000e9 * 0.5))


def test_profiles_with_the_new_curves_read_back_and_check_their_bounds():
    machine = machine_from_dict({**BASE, "gemm_efficiency_by_min_dim": BY_DIM,
                                 "attention_efficiency": {"forward": [[1e9, 1.4]]},
                                 "memory_efficiency": {"norm": [[1e6, 0.3]]}})
    assert machine_from_dict(machine_to_dict(machine)) == machine
    with pytest.raises(ProfileError, match="attention_efficiency.forward values .* must be <= 2"):
        machine_from_dict({**BASE, "attention_efficiency": {"forward": [[1e9, 2.5]]}})
    with pytest.raises(ProfileError, match="gemm_efficiency_by_min_dim.16 values .* must be <= 1"):
        machine_from_dict({**BASE, "gemm_efficiency_by_min_dim": {16: [[1e6, 1.2]]}})
    with pytest.raises(ProfileError, match="keyed by positive integer dimensions"):
        machine_from_dict({**BASE, "gemm_efficiency_by_min_dim": {"small": [[1e6, 0.2]]}})


def test_bf16_gradient_reductions_send_half_the_bytes():
    tiny = preset("tiny")
    layout = Layout(data=2, depth=2)
    args = (tiny, layout, 2, 64, "bfloat16", False, 2, True, True)
    fp32, bf16 = micro_batch_work(*args), micro_batch_work(*args, grad_reduce_dtype="bfloat16")
    scatters = lambda work: [c.nbytes for c in work.comms if c.op == "reduce_scatter"]  # noqa: E731
    # wq's 64 x 64 block, depth-sharded: 4,096 elements reduce-scattered as fp32 (4 B) or bf16 (2 B)
    assert scatters(fp32)[0] == 4096 * 4 and scatters(bf16)[0] == 4096 * 2
    assert [2 * b for b in scatters(bf16)] == scatters(fp32)
    buckets = lambda reduce: [c.nbytes for c in step_collectives(tiny, layout, 25.0, 2, True, True, reduce)  # noqa: E731
                              if c.kind == "dp"]
    # one 25 MB bucket of every depth shard, then the norm gains over data x depth (5 x 64)
    shards = (2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 192) + 2 * 256 * 64) // 2
    assert buckets("float32") == [shards * 4, 5 * 64 * 4] and buckets("bfloat16") == [shards * 2, 5 * 64 * 2]
    setup = lambda reduce: TrainingSetup(global_batch=8, seq_len=64, dtype="bfloat16", overlap=(),  # noqa: E731
                                         grad_reduce_dtype=reduce)
    machine = machine_from_dict(BASE)
    slow, fast = (predict(tiny, layout, machine, setup(r)) for r in ("float32", "bfloat16"))
    assert fast.breakdown["data_comm"] < slow.breakdown["data_comm"]
    assert fast.breakdown["depth_reduce_scatter"] < slow.breakdown["depth_reduce_scatter"]
