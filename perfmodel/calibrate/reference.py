"""A whole training step against the sum of its ops' prices: `in_context_slowdown`; and the
framework's cost per op, `op_overhead_us`, from the same step on a model too small to compute.

The curves `calibrate` fits time each kind of op alone, on operands it just touched. In a
real step the ops follow one another: operands come from memory the previous op evicted,
the allocator hands out fresh pages, the interpreter runs between kernels. This module runs
one forward, backward, gradient-clipping and AdamW step of a small plain-PyTorch Llama (the
ops and kernels axon's engine uses: its attention, RoPE and cross-entropy; on one rank,
every rank at once) and divides its time by what
`perfmodel.predict` prices the same step at from the curves just measured. `predict`
multiplies every compute time by that ratio.

The cost of an op beyond its work (autograd's bookkeeping, the optimizer's loops, the
allocator, the interpreter) is measured the same way, on a reference too small for its
GEMMs and passes to matter, over the ops `predict` counts for it: a bare op timed alone costs
a fraction of that (1.3 against 9.4 us here, on one core). torch is imported inside functions only.
"""

from __future__ import annotations

import dataclasses

from axon.spec.layout import Layout
from perfmodel.machine import Machine
from axon.spec.shapes import ModelShape
from perfmodel.predict import predict
from axon.spec.training import TrainingSetup

COMPUTE = ("gemm", "attention", "elementwise", "optimizer")
STEP_WINDOWS = 12  # the reference step's timing window, in the bench's windows for one op


def reference_shape(cuda: bool) -> tuple[ModelShape, int]:
    """(model, micro-batch): two blocks of a model of the size one rank trains here."""
    if cuda:
        return ModelShape(layers=2, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=32768, seq_len=4096), 1
    return ModelShape(layers=2, hidden=256, heads=8, kv_heads=4, ffn=704, vocab=2048, seq_len=128), 4


def overhead_shape() -> ModelShape:
    """A reference whose work is a rounding error next to its framework ops."""
    return ModelShape(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=64, seq_len=8)


def reference_step(shape: ModelShape, micro: int, dtype_name: str, device):
    """A no-argument function running one optimizer step of the reference model."""
    import torch
    import torch.nn.functional as F

    from axon.kernels.attention import causal_attention
    from axon.kernels.cross_entropy import SliceCrossEntropy
    from axon.kernels.rope import apply_rotary, rotary_tables

    dtype, generator = getattr(torch, dtype_name), torch.Generator().manual_seed(0)
    hidden, head_dim, seq = shape.hidden, shape.head_dim, shape.seq_len

    def matrix(rows: int, cols: int):
        return torch.nn.Parameter((torch.randn(rows, cols, generator=generator) * 0.02).to(device, dtype))

    def gain():
        return torch.nn.Parameter(torch.ones(hidden, device=device))

    blocks = [{"attn_norm": gain(), "wq": matrix(hidden, hidden), "wk": matrix(shape.kv_heads * head_dim, hidden),
               "wv": matrix(shape.kv_heads * head_dim, hidden), "wo": matrix(hidden, hidden), "mlp_norm": gain(),
               "w1": matrix(shape.ffn, hidden), "w3": matrix(shape.ffn, hidden), "w2": matrix(hidden, shape.ffn)}
              for _ in range(shape.layers)]
    embedding, head, final_norm = matrix(shape.vocab, hidden), matrix(shape.vocab, hidden), gain()
    cos, sin = (t.to(dtype) for t in rotary_tables(seq, head_dim, shape.rope_theta, device))
    tokens = torch.randint(0, shape.vocab, (micro, seq + 1), generator=generator).to(device)

    def norm(x, weight):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + shape.norm_eps) * weight).to(x.dtype)

    def heads(x, count):
        return x.view(micro, seq, count, head_dim).transpose(1, 2)

    def loss():
        x = embedding[tokens[:, :-1]]
        for w in blocks:
            y = norm(x, w["attn_norm"])
            q = apply_rotary(heads(y @ w["wq"].t(), shape.heads), cos, sin)
            k = apply_rotary(heads(y @ w["wk"].t(), shape.kv_heads), cos, sin)
            attended = causal_attention(q, k, heads(y @ w["wv"].t(), shape.kv_heads))
            x = x + attended.transpose(1, 2).reshape(micro, seq, hidden) @ w["wo"].t()
            y = norm(x, w["mlp_norm"])
            x = x + (F.silu(y @ w["w1"].t()) * (y @ w["w3"].t())) @ w["w2"].t()
        logits = norm(x, final_norm) @ head.t()
        return SliceCrossEntropy.apply(logits.float().view(-1, shape.vocab), tokens[:, 1:].reshape(-1)).mean()

    params = [embedding, head, final_norm] + [p for w in blocks for p in w.values()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-8)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the engine clips every step: a norm, then a scale
        optimizer.step()
    return step


def priced_compute_s(machine: Machine, shape: ModelShape, micro: int, dtype_name: str) -> float:
    """perfmodel's compute seconds for the reference step on one rank, before any slowdown."""
    setup = TrainingSetup(global_batch=micro, seq_len=shape.seq_len, micro_batch=micro, dtype=dtype_name,
                          recompute="none", overlap=())
    breakdown = predict(shape, Layout(), machine, setup).breakdown
    return sum(breakdown[k] for k in COMPUTE)


def measure_in_context_slowdown(bench, machine: Machine, dtype_name: str,
                                reference: tuple[ModelShape, int] | None = None) -> tuple[float, float, float]:
    """(slowdown, measured s, priced s): the reference step's time, every rank running it at
    once, over its price from `machine` (whose own slowdown must still be 1). `reference`:
    (model, micro-batch), else `reference_shape`."""
    shape, micro = reference or reference_shape(bench.cuda)
    # A step is about a second at 8 ranks on 2 cores: a window of several steps per repeat, not
    # one, so one slow step (a scheduler hiccup) does not set the machine's level.
    step = reference_step(shape, micro, dtype_name, bench.device)
    measured = bench.seconds(step, local=True, window_s=STEP_WINDOWS * bench.window_s)
    priced = priced_compute_s(machine, shape, micro, dtype_name)
    return measured / priced, measured, priced


def measure_op_overhead_us(bench, machine: Machine, dtype_name: str) -> float:
    """Microseconds per framework op, every rank at once: the `overhead_shape` step's time,
    less what its work is priced at, over the ops `predict` counts for it (its price at 1 us
    per op, less its price at none)."""
    shape = overhead_shape()
    measured = bench.seconds(reference_step(shape, 1, dtype_name, bench.device), local=True)
    bare = dataclasses.replace(machine, op_overhead_us=0.0, in_context_slowdown=1.0)
    work_s = priced_compute_s(bare, shape, 1, dtype_name)
    seconds_per_us = priced_compute_s(dataclasses.replace(bare, op_overhead_us=1.0), shape, 1, dtype_name) - work_s
    return max(measured - work_s, 0.0) / seconds_per_us
