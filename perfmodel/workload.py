"""What one micro-batch asks of one rank: its GEMMs, its collectives, its elementwise bytes.

This mirrors axon's implementation (DESIGN §4): each linear layer all-gathers its weight
block over depth in forward and again in backward, all-reduces Y over the axis splitting
its input, all-reduces dX over the axis splitting its output, and reduce-scatters dW over
depth; RMSNorm all-reduces its statistics over col (forward and backward); the embedding
sums partial rows over row; the cross-entropy reduces max and sums over row. A test
compares this inventory with the collectives axon's trace records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from perfmodel.layout import Layout
from perfmodel.models import ModelShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
ORIENTATIONS = {"normal": ("row", "col"), "transposed": ("col", "row")}  # (axis of out, axis of in)


@dataclass(frozen=True)
class Comm:
    """One collective (or `count` identical ones) of a micro-batch on one rank."""

    op: str  # all_reduce, all_gather, reduce_scatter, send
    axes: tuple[str, ...]
    nbytes: float  # full buffer, as axon's trace counts it
    kind: str  # how overlap treats it: blocking, gather, dx, rs, p2p
    phase: str  # forward, backward (recompute counts as backward)
    count: int = 1


@dataclass(frozen=True)
class Gemm:
    flops: float
    phase: str
    kind: str = "linear"  # linear (dX or forward), dw (the weight-gradient GEMM OAR hides behind), attention
    count: int = 1


@dataclass
class MicroBatchWork:
    gemms: list[Gemm] = field(default_factory=list)
    comms: list[Comm] = field(default_factory=list)
    elementwise_bytes: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})
    ops: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})


def block_matrices(shape: ModelShape, with_head: bool):
    """(name, in, out, orientation) of one transformer block's matrices in forward order,
    then the LM head's if asked for."""
    h, kv, f = shape.hidden, shape.kv_heads * shape.head_dim, shape.ffn
    matrices = [("wq", h, h, "normal"), ("wk", h, kv, "normal"), ("wv", h, kv, "normal"),
                ("wo", h, h, "transposed"), ("w1", h, f, "normal"), ("w3", h, f, "normal"),
                ("w2", f, h, "transposed")]
    return matrices + ([("output", h, shape.vocab, "normal")] if with_head else [])


def local_dims(layout: Layout, in_f: int, out_f: int, orientation: str) -> tuple[int, int, str, str]:
    out_axis, in_axis = ORIENTATIONS[orientation]
    return in_f // getattr(layout, in_axis), out_f // getattr(layout, out_axis), in_axis, out_axis


def padded(numel: int, depth: int) -> int:
    return -(-numel // depth) * depth


def micro_batch_work(shape: ModelShape, layout: Layout, micro: int, seq: int, dtype: str,
                     recompute: bool, stage_layers: int, first: bool, last: bool) -> MicroBatchWork:
    """One micro-batch of `micro` sequences through one pipeline stage on one rank."""
    eb = DTYPE_BYTES[dtype]
    tokens = micro * seq
    r, c, d = layout.row, layout.col, layout.depth
    work = MicroBatchWork()
    forward_passes = ("forward", "backward") if recompute else ("forward",)  # recompute re-runs forward

    # The layers of a stage are alike: one entry per matrix of a block, counted `stage_layers` times.
    for name, in_f, out_f, orientation in block_matrices(shape, last):
        n = 1 if name == "output" else stage_layers
        li, lo, in_axis, out_axis = local_dims(layout, in_f, out_f, orientation)
        flops = 2.0 * tokens * li * lo
        block = padded(li * lo, d)
        for phase in (("forward",) if name == "output" else forward_passes):  # the head is not recomputed
            work.gemms.append(Gemm(flops, phase, count=n))
            work.comms.append(Comm("all_gather", ("depth",), block * eb, "gather", phase, n))
            work.comms.append(Comm("all_reduce", (in_axis,), tokens * lo * eb, "blocking", phase, n))
        work.gemms += [Gemm(flops, "backward", count=n), Gemm(flops, "backward", "dw", n)]
        work.comms += [Comm("all_gather", ("depth",), block * eb, "gather", "backward", n),
                       Comm("all_reduce", (out_axis,), tokens * li * eb, "dx", "backward", n),
                       Comm("reduce_scatter", ("depth",), block * 4, "rs", "backward", n)]  # fp32 master grads

    # Attention scores and values: 4 b s^2 d per head forward, twice that backward.
    heads = shape.heads // r
    attention = 4.0 * micro * seq * seq * shape.head_dim * heads * stage_layers
    for phase in forward_passes:
        work.gemms.append(Gemm(attention, phase, "attention"))
    work.gemms.append(Gemm(2 * attention, "backward", "attention"))

    norms = 2 * stage_layers + (1 if last else 0)
    work.comms += [Comm("all_reduce", ("col",), tokens * 4, "blocking", "forward", norms),
                   Comm("all_reduce", ("col",), tokens * 4, "blocking", "backward", norms)]
    if recompute:
        work.comms.append(Comm("all_reduce", ("col",), tokens * 4, "blocking", "backward", 2 * stage_layers))

    if first:  # embedding: gather the table block, sum partial rows over row; its gradient is scattered
        table = padded((shape.vocab // r) * (shape.hidden // c), d)
        work.comms += [Comm("all_gather", ("depth",), table * 4, "gather", "forward"),
                       Comm("all_reduce", ("row",), tokens * (shape.hidden // c) * 4, "blocking", "forward"),
                       Comm("reduce_scatter", ("depth",), table * 4, "blocking", "backward")]
    if last:  # vocab-parallel cross-entropy: max, then (sum of exp, target logit) in one
        work.comms += [Comm("all_reduce", ("row",), tokens * 4, "blocking", "forward"),
                       Comm("all_reduce", ("row",), 2 * tokens * 4, "blocking", "forward")]
    if layout.pipe > 1:  # activations to the next stage, their gradients back
        if not last:
            work.comms.append(Comm("send", ("pipe",), tokens * (shape.hidden // c) * eb, "p2p", "forward"))
        if not first:
            work.comms.append(Comm("send", ("pipe",), tokens * (shape.hidden // c) * eb, "p2p", "backward"))

    # Elementwise traffic (norms, rotary, SwiGLU, residual adds, softmax of the loss) in bytes
    # per token; a rough count of passes over each activation, the same for every layout.
    h_c, qkv_r = shape.hidden / c, (shape.hidden + 2 * shape.kv_heads * shape.head_dim) / r
    per_token = stage_layers * (16 * h_c + 6 * qkv_r + 6 * shape.ffn / r) * eb
    if last:
        per_token += 6 * (shape.vocab / r) * 4
    for phase in forward_passes:
        work.elementwise_bytes[phase] += tokens * per_token
    work.elementwise_bytes["backward"] += 2 * tokens * per_token
    # Framework ops (kernel launches) per layer: forward ~40, backward ~60.
    for phase in forward_passes:
        work.ops[phase] += 40 * stage_layers + 20
    work.ops["backward"] += 60 * stage_layers + 30
    return work


def stage_parameters(shape: ModelShape, layout: Layout, stage_layers: int, first: bool, last: bool) -> dict[str, float]:
    """Elements of one rank's parameter shards: depth-sharded matrices and replicated norm gains."""
    d = layout.depth
    sharded = 0
    for name, in_f, out_f, orientation in block_matrices(shape, last):
        li, lo, _, _ = local_dims(layout, in_f, out_f, orientation)
        sharded += padded(li * lo, d) // d * (1 if name == "output" else stage_layers)
    if first:
        sharded += padded((shape.vocab // layout.row) * (shape.hidden // layout.col), d) // d
    gains = (2 * stage_layers + (1 if last else 0)) * shape.hidden // layout.col
    return {"sharded": float(sharded), "replicated": float(gains)}


def step_collectives(shape: ModelShape, layout: Layout, bucket_mb: float, stage_layers: int,
                     first: bool, last: bool) -> list[Comm]:
    """The collectives of a step outside the micro-batches: data-parallel buckets, then the
    loss sum and the gradient norm's square-sum (axon.parallel.data_parallel, train, grads)."""
    d = layout.depth
    sizes = []  # depth-sharded parameters in reverse module order, as the buckets take them
    if last:
        sizes.append(_shard(shape.hidden, shape.vocab, "normal", layout))
    for _ in range(stage_layers):
        sizes += [_shard(i, o, orient, layout) for _, i, o, orient in reversed(block_matrices(shape, False))]
    if first:
        sizes.append(padded((shape.vocab // layout.row) * (shape.hidden // layout.col), d) // d)
    comms = []
    if layout.data > 1:
        limit, current = bucket_mb * 2 ** 20, 0
        for numel in sizes:
            if current and (current + numel) * 4 > limit:
                comms.append(Comm("all_reduce", ("data",), current * 4, "dp", "backward"))
                current = 0
            current += numel
        comms.append(Comm("all_reduce", ("data",), current * 4, "dp", "backward"))
    gains = (2 * stage_layers + (1 if last else 0)) * shape.hidden // layout.col
    # The loss (fp32) and the clip norm's square-sum (fp64) each travel with the stop-signal vote.
    if layout.data * d > 1:
        comms.append(Comm("all_reduce", ("data", "depth"), gains * 4, "dp", "backward"))
        comms.append(Comm("all_reduce", ("data", "depth"), 2 * 4, "sync", "step"))  # the loss
    if layout.pipe > 1:
        comms.append(Comm("all_reduce", ("pipe",), 2 * 4, "sync", "step"))  # the loss lives on the last stage
    comms += [Comm("all_reduce", (axis,), 2 * 8, "sync", "step") for axis in ("depth", "row", "col", "pipe")
              if getattr(layout, axis) > 1]  # the clip norm
    return comms


def _shard(in_f: int, out_f: int, orientation: str, layout: Layout) -> int:
    li, lo, _, _ = local_dims(layout, in_f, out_f, orientation)
    return padded(li * lo, layout.depth) // layout.depth
