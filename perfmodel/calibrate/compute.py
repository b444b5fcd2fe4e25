"""Compute measurements behind `perfmodel calibrate`: GEMMs by shape, SDPA attention, memory-bound work.

Each runs the operation the way axon's engine does (the same operand layouts, the tuner's
pick where GEMM tuning is on, the same eager ops) and times it on every rank at once with
`Bench`, so the efficiencies priced by `perfmodel.predict` are measured on the counts it
uses: GEMM FLOPs 2mnk, attention FLOPs 4 b s^2 d heads, and the bytes of
`perfmodel.workload.memory_bytes`. torch is imported inside functions only.
"""

from __future__ import annotations

import statistics

from perfmodel.workload import OPTIMIZER_BYTES_PER_PARAM, memory_bytes

# Where the small dimension sits, and the operand layouts axon holds for that GEMM (x @ W^T
# forward: K = in/col is small when col is large; dX = dY W: N = in; dW = dY^T X: M = out).
ROLES = {"forward": ("K", "NT"), "dX": ("N", "NN"), "dW": ("M", "TN")}


def min_dim_shapes(cuda: bool, quick: bool) -> list[tuple[int, int]]:
    """(smallest dimension d, the other two b) pairs: ~1e6 to 4e9 FLOPs on a CPU, ~1e8 to 1e13 on a GPU."""
    if cuda:
        dims, bigs, cap = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], [2048, 8192, 16384], 1.2e13
        if quick:
            dims, bigs = [64, 256, 1024, 4096], [2048, 16384]
    else:
        dims, bigs, cap = [16, 32, 64, 128, 256, 512, 1024], [256, 1024, 2048], 4.5e9
        if quick:
            dims, bigs = [16, 64, 256], [256, 2048]
    return [(d, b) for d in dims for b in bigs if b >= d and 2.0 * b * b * d <= cap]


def role_shape(role: str, d: int, b: int) -> tuple[int, int, int]:
    small = ROLES[role][0]
    return (d if small == "M" else b, d if small == "N" else b, d if small == "K" else b)


def gemm_call(m: int, n: int, k: int, role: str, dtype, device, tuned: bool):
    """A no-argument function computing C[m, n] = A[m, k] @ B[k, n] as axon's `role` GEMM does."""
    import torch

    from axon.kernels.gemm import mm_fp32_out, run_candidate
    from axon.kernels.tune import GemmTuner

    held = ROLES[role][1]
    a = torch.randn(m, k, device=device, dtype=dtype) if held[0] == "N" else \
        torch.randn(k, m, device=device, dtype=dtype).t()
    b = torch.randn(k, n, device=device, dtype=dtype) if held[1] == "N" else \
        torch.randn(n, k, device=device, dtype=dtype).t()
    if role == "dW" and dtype != torch.float32:
        return lambda: mm_fp32_out(a, b)  # bf16 weight gradients leave the GEMM in fp32
    if not tuned:
        return lambda: torch.mm(a, b)
    tuner = GemmTuner()  # the tuner's own choice: the fastest candidate unless the held one is as fast
    names, _ = tuner.feasible(a, b, held)
    best = tuner.pick(tuner.time_candidates(a, b, names), held) if len(names) > 1 else names[0]
    return (lambda: torch.mm(a, b)) if best == held else (lambda: run_candidate(best, a, b))


def measure_gemms_by_min_dim(bench, dtype_name: str, quick: bool, tuned: bool) -> list[tuple[tuple, str, float]]:
    """((m, n, k), role, seconds) for every (d, b) pair and role."""
    import torch

    dtype, results = getattr(torch, dtype_name), []
    for d, b in min_dim_shapes(bench.cuda, quick):
        for role in ROLES:
            m, n, k = role_shape(role, d, b)
            call = gemm_call(m, n, k, role, dtype, bench.device, tuned)
            results.append(((m, n, k), role, bench.seconds(call, local=True)))
    return results


def min_dim_curves(results, peak_flops: float) -> dict[int, list[tuple[float, float]]]:
    """{smallest dimension: [(flops, efficiency)]}: per shape, the median over the three roles."""
    by_shape: dict[tuple[int, float], list[float]] = {}
    for (m, n, k), _, seconds in results:
        flops = 2.0 * m * n * k
        by_shape.setdefault((min(m, n, k), flops), []).append(min(1.0, flops / seconds / peak_flops))
    curves: dict[int, list[tuple[float, float]]] = {}
    for (d, flops), effs in sorted(by_shape.items()):
        curves.setdefault(d, []).append((flops, statistics.median(effs)))
    return curves


def attention_shapes(cuda: bool, quick: bool) -> list[tuple[int, int, int, int, int]]:
    """(batch, heads, kv heads, seq, head dim) of causal SDPA calls."""
    if cuda:
        shapes = [(1, 32, 8, 2048, 128), (2, 32, 8, 4096, 128), (1, 64, 8, 8192, 128), (1, 16, 8, 1024, 128)]
    else:
        shapes = [(1, 4, 2, 128, 64), (4, 4, 2, 128, 64), (2, 4, 2, 512, 64), (16, 8, 4, 128, 40)]
    return shapes[:3] if quick else shapes


def measure_attention(bench, dtype_name: str, quick: bool, peak_flops: float) -> dict[str, list[tuple[float, float]]]:
    """{forward, backward: [(flops of the call, efficiency)]}: forward 4 b s^2 d heads, backward
    twice that (no causal discount, the FLOPs convention of axon.spec.flops)."""
    import torch

    from axon.kernels.attention import causal_attention

    dtype = getattr(torch, dtype_name)
    curves = {"forward": [], "backward": []}
    for batch, heads, kv, seq, dim in attention_shapes(bench.cuda, quick):
        q = torch.randn(batch, heads, seq, dim, device=bench.device, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(batch, kv, seq, dim, device=bench.device, dtype=dtype, requires_grad=True) for _ in "kv")
        grad = torch.randn(batch, heads, seq, dim, device=bench.device, dtype=dtype)
        forward = bench.seconds(lambda: causal_attention(q, k, v), local=True)
        both = bench.seconds(lambda: causal_attention(q, k, v).backward(grad), local=True)
        flops = 4.0 * batch * seq * seq * dim * heads
        curves["forward"].append((flops, min(2.0, flops / forward / peak_flops)))
        curves["backward"].append((2 * flops, min(2.0, 2 * flops / max(both - forward, 1e-9) / peak_flops)))
    return {phase: sorted(points) for phase, points in curves.items()}


def _memory_work(kind: str, elements: int, dtype, device):
    """(forward fn or None, forward-and-backward fn, element bytes) running `kind` as axon does."""
    import torch
    import torch.nn.functional as F

    from axon.kernels.rope import apply_rotary, rotary_tables

    def leaf(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt, requires_grad=True)

    if kind == "norm":  # axon.parallel.norm.ShardedRMSNorm without its all-reduce
        width = 512
        x, weight = leaf(elements // width, width), leaf(width, dt=torch.float32)

        def fn():
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).sum(-1, keepdim=True) / width + 1e-5) * weight).to(x.dtype)
    elif kind == "rope":  # axon.kernels.apply_rotary on [batch, heads, seq, head_dim]
        seq, dim = 256, 64
        x = leaf(1, elements // (seq * dim), seq, dim)
        cos, sin = (t.to(dtype) for t in rotary_tables(seq, dim, 500000.0, device))

        def fn():
            return apply_rotary(x, cos, sin)
    elif kind == "swiglu":  # silu(w1 x) * w3 x, counted per element of w1's output
        a, b = leaf(elements), leaf(elements)

        def fn():
            return F.silu(a) * b
    elif kind == "residual":
        a, b = leaf(elements), leaf(elements)

        def fn():
            return a + b
    elif kind == "loss":  # the engine's local cross-entropy work (axon.kernels.cross_entropy), both ways, in fp32
        from axon.kernels.cross_entropy import SliceCrossEntropy

        vocab = 4096
        logits = torch.randn(elements // vocab, vocab, device=device, requires_grad=True)
        targets = torch.randint(0, vocab, (elements // vocab,), device=device)
        dloss = torch.rand(elements // vocab, device=device)

        def loss_both():  # autograd.grad: the gradient is not accumulated into a .grad (no extra pass)
            return torch.autograd.grad(SliceCrossEntropy.apply(logits, targets), logits, dloss)
        return None, loss_both, 4
    else:
        raise ValueError(f"unknown memory-bound kind {kind!r}")
    out_grad = torch.randn_like(fn())
    return fn, lambda: fn().backward(out_grad), torch.finfo(dtype).bits // 8


def memory_sizes(cuda: bool, quick: bool) -> list[int]:
    """Elements per measured tensor: in cache, about cache-sized, and well past it."""
    sizes = [1 << 20, 1 << 23, 1 << 26] if cuda else [1 << 16, 1 << 19, 1 << 22]
    return sizes[::2] if quick else sizes


def measure_memory_kinds(bench, dtype_name: str, quick: bool, bandwidth_gbs: float) -> dict[str, list[tuple[float, float]]]:
    """{kind: [(bytes of one pass, efficiency)]}: the bytes `memory_bytes` counts for a forward
    and a backward, over the time both take, against the measured memory bandwidth."""
    import torch

    dtype, curves = getattr(torch, dtype_name), {}
    for kind in ("norm", "rope", "swiglu", "residual", "loss"):
        for elements in memory_sizes(bench.cuda, quick):
            _, both, element_bytes = _memory_work(kind, elements, dtype, bench.device)
            moved = sum(memory_bytes(kind, phase, elements, element_bytes) for phase in ("forward", "backward"))
            seconds = bench.seconds(both, local=True)
            curves.setdefault(kind, []).append((moved / 2, min(1.0, moved / seconds / (bandwidth_gbs * 1e9))))
    curves["optimizer"] = measure_optimizer(bench, quick, bandwidth_gbs)
    return curves


def measure_optimizer(bench, quick: bool, bandwidth_gbs: float) -> list[tuple[float, float]]:
    """AdamW (torch's default implementation, as axon builds it) over fp32 parameters of a few sizes."""
    import torch

    points = []
    for elements in memory_sizes(bench.cuda, quick):
        params = [torch.nn.Parameter(torch.randn(elements // 4, device=bench.device)) for _ in range(4)]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-8)
        moved = OPTIMIZER_BYTES_PER_PARAM * elements
        seconds = bench.seconds(optimizer.step, local=True)
        points.append((float(moved), min(1.0, moved / seconds / (bandwidth_gbs * 1e9))))
    return points
