"""What one micro-batch asks of one rank: its GEMMs by shape, attention, memory-bound passes, collectives.

This mirrors axon's implementation (DESIGN §4): each linear layer all-gathers its weight
block over depth in forward and again in backward, all-reduces Y over the axis splitting
its input, all-reduces dX over the axis splitting its output, and reduce-scatters dW over
depth; RMSNorm all-reduces its statistics over col (forward and backward); the embedding
sums partial rows over row; the cross-entropy reduces max and sums over row. A test
compares this inventory with the collectives axon's trace records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.spec.parameters import ORIENTATIONS, linear_layers

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


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
    """`batch` products C[m, n] = A[m, k] @ B[k, n] in one call, `count` calls. An attention call
    (kind "attention", priced as SDPA) is its score and value products for every head and sequence."""

    m: int
    n: int
    k: int
    phase: str
    kind: str = "linear"  # linear (forward or dX), dw (the weight-gradient GEMM OAR hides behind), attention
    count: int = 1
    batch: int = 1

    @property
    def flops(self) -> float:
        """Of one call."""
        return 2.0 * self.m * self.n * self.k * self.batch


@dataclass(frozen=True)
class MemoryPass:
    """Memory-bound work (norms, RoPE, SwiGLU, residual adds, the loss): `nbytes` moved, counted
    by `memory_bytes_per_token` (calibrate measures each kind's efficiency on the same count)."""

    kind: str
    nbytes: float  # of one pass
    phase: str
    count: int = 1


@dataclass
class MicroBatchWork:
    gemms: list[Gemm] = field(default_factory=list)
    comms: list[Comm] = field(default_factory=list)
    memory: list[MemoryPass] = field(default_factory=list)
    ops: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})


# Bytes each kind of memory-bound work reads and writes per element of the tensor it acts on,
# (forward, backward), as one fused kernel would; eager PyTorch makes more passes, which the
# measured efficiency absorbs. Source: the tensors each op's forward and backward read and write,
# counted from the op's inputs and outputs (the least traffic it can have; the small gain vectors
# and per-token statistics left out). norm: read x, write y / read x, dy, write dx; rope: read, write
# (q or k) both ways; swiglu (per element of w1's output): read a, b, write out / read a, b, dout,
# write da, db; residual: read two, write one / pass the gradient on; loss (per fp32 logit):
# read logits, write the softmax / read it, write the gradient.
PASSES = {"norm": (2, 3), "rope": (2, 2), "swiglu": (3, 5), "residual": (3, 1), "loss": (2, 2)}
# AdamW in fp32, 4 bytes per tensor element, counted from the update: read p, g, m, v (16); write p, m, v
# (12); zero g (4); scale g for clipping (read + write, 8; axon.parallel.grads.clip_grad_norm scales
# whatever the norm) -> 40. Left out: the clip norm's own read of g (4 more). Calibrate times torch's
# AdamW step alone (the 28 of the update) over this same count (perfmodel.calibrate.compute
# .measure_optimizer), so a calibrated profile charges the zeroing and clipping at the step's own rate.
OPTIMIZER_BYTES_PER_PARAM = 40


def memory_bytes(kind: str, phase: str, elements: float, element_bytes: int) -> float:
    """Bytes `kind` moves over a tensor of `elements` in `phase` (forward or backward)."""
    return PASSES[kind][phase == "backward"] * elements * element_bytes


def block_matrices(shape: ModelShape, with_head: bool):
    """(name, in, out, orientation) of one transformer block's matrices in forward order,
    then the LM head's if asked for."""
    return linear_layers(shape, with_head)


def local_dims(layout: Layout, in_f: int, out_f: int, orientation: str) -> tuple[int, int, str, str]:
    out_axis, in_axis = ORIENTATIONS[orientation]
    return in_f // getattr(layout, in_axis), out_f // getattr(layout, out_axis), in_axis, out_axis


def padded(numel: int, depth: int) -> int:
    return -(-numel // depth) * depth


def pipeline_sends(shape: ModelShape, layout: Layout, tokens: int, dtype: str, first: bool, last: bool,
                   chunks: int = 1) -> list[Comm]:
    """The point-to-point sends of one micro-batch through `chunks` chunks of the layers: each
    sends its activations on, except the model's last chunk, and its input's gradient back,
    except the model's first (`first`, `last`: whether these chunks include those)."""
    nbytes = tokens * (shape.hidden // layout.col) * DTYPE_BYTES[dtype]
    sends = [Comm("send", ("pipe",), nbytes, "p2p", "forward", chunks - last),
             Comm("send", ("pipe",), nbytes, "p2p", "backward", chunks - first)]
    return [send for send in sends if send.count]


def micro_batch_work(shape: ModelShape, layout: Layout, micro: int, seq: int, dtype: str,
                     recompute: bool, stage_layers: int, first: bool, last: bool,
                     grad_reduce_dtype: str = "float32") -> MicroBatchWork:
    """One micro-batch of `micro` sequences through one pipeline stage on one rank. Gradients
    are reduce-scattered over depth in `grad_reduce_dtype` (train.grad_reduce_dtype)."""
    eb, gb = DTYPE_BYTES[dtype], DTYPE_BYTES[grad_reduce_dtype]
    tokens = micro * seq
    r, c, d = layout.row, layout.col, layout.depth
    work = MicroBatchWork()
    forward_passes = ("forward", "backward") if recompute else ("forward",)  # recompute re-runs forward

    # The layers of a stage are alike: one entry per matrix of a block, counted `stage_layers` times.
    for name, in_f, out_f, orientation in block_matrices(shape, last):
        n = 1 if name == "output" else stage_layers
        li, lo, in_axis, out_axis = local_dims(layout, in_f, out_f, orientation)
        block = padded(li * lo, d)
        for phase in (("forward",) if name == "output" else forward_passes):  # the head is not recomputed
            work.gemms.append(Gemm(tokens, lo, li, phase, count=n))  # Y = X W^T
            work.comms.append(Comm("all_gather", ("depth",), block * eb, "gather", phase, n))
            work.comms.append(Comm("all_reduce", (in_axis,), tokens * lo * eb, "blocking", phase, n))
        work.gemms += [Gemm(tokens, li, lo, "backward", count=n),  # dX = dY W
                       Gemm(lo, li, tokens, "backward", "dw", n)]  # dW = dY^T X
        work.comms += [Comm("all_gather", ("depth",), block * eb, "gather", "backward", n),
                       Comm("all_reduce", (out_axis,), tokens * li * eb, "dx", "backward", n),
                       Comm("reduce_scatter", ("depth",), block * gb, "rs", "backward", n)]

    # Attention: scores Q K^T and values P V, two [s, s, d] products per head and sequence
    # forward (4 b s^2 d per head, no causal discount), four backward.
    products = micro * (shape.heads // r)
    for phase in forward_passes:
        work.gemms.append(Gemm(seq, seq, shape.head_dim, phase, "attention", stage_layers, 2 * products))
    work.gemms.append(Gemm(seq, seq, shape.head_dim, "backward", "attention", stage_layers, 4 * products))

    norms = 2 * stage_layers + (1 if last else 0)
    work.comms += [Comm("all_reduce", ("col",), tokens * 4, "blocking", "forward", norms),
                   Comm("all_reduce", ("col",), tokens * 4, "blocking", "backward", norms)]
    if recompute:
        work.comms.append(Comm("all_reduce", ("col",), tokens * 4, "blocking", "backward", 2 * stage_layers))

    if first:  # embedding: gather the table block, sum partial rows over row; its gradient is scattered
        table = padded((shape.vocab // r) * (shape.hidden // c), d)
        work.comms += [Comm("all_gather", ("depth",), table * 4, "gather", "forward"),
                       Comm("all_reduce", ("row",), tokens * (shape.hidden // c) * 4, "blocking", "forward"),
                       Comm("reduce_scatter", ("depth",), table * gb, "blocking", "backward")]
    if last:  # vocab-parallel cross-entropy: max, then (sum of exp, target logit) in one
        work.comms += [Comm("all_reduce", ("row",), tokens * 4, "blocking", "forward"),
                       Comm("all_reduce", ("row",), 2 * tokens * 4, "blocking", "forward")]
    if layout.pipe > 1:
        work.comms += pipeline_sends(shape, layout, tokens, dtype, first, last)

    # Memory-bound work on this rank's activations: two norms and two residual adds per block over
    # [tokens, hidden/col]; RoPE on q and k [tokens, (heads + kv heads)/row x head_dim]; SwiGLU on
    # [tokens, ffn/row]; the final norm and the fp32 loss over [tokens, vocab/row] on the last stage.
    per_block = {"norm": (shape.hidden / c, 2), "residual": (shape.hidden / c, 2), "swiglu": (shape.ffn / r, 1),
                 "rope": ((shape.heads // r + shape.kv_heads // r) * shape.head_dim, 1)}  # (width, passes)
    for kind, (width, passes) in per_block.items():
        for phase in (*forward_passes, "backward"):
            work.memory.append(MemoryPass(kind, memory_bytes(kind, phase, tokens * width, eb), phase,
                                          passes * stage_layers))
    if last:
        for phase in ("forward", "backward"):
            work.memory += [MemoryPass("norm", memory_bytes("norm", phase, tokens * shape.hidden / c, eb), phase),
                            MemoryPass("loss", memory_bytes("loss", phase, tokens * shape.vocab / r, 4), phase)]
    # Framework ops (kernel launches) per layer: forward ~40, backward ~60; outside the layers (embedding,
    # final norm, head, loss) ~20 forward, ~30 backward. An estimate, kept because the profiles' op_overhead_us
    # (calibrate measures it as a tiny step's excess time over these counts: perfmodel.calibrate.reference)
    # and the fitted levels were set with it. Measured on axon's own blocks (CPU, preset tiny, bf16, seq 64,
    # 4 micro-batches of 2; layers 2 and 4, the difference per layer per micro-batch; optimizer excluded):
    # eager 41.75 forward / 89.75 backward per layer, ~48 / ~31 outside the layers per micro-batch (the
    # per-step gradient clipping and zeroing spread over the 4 micro-batches counted there); whole blocks
    # compiled (train.compile) 9.75 / 35.75 per layer. Counted as benchmarks/launch_counts.py counts (top-level
    # aten ops that launch a kernel, plus inductor's kernels; its JSON gives the 131.5 eager / 57.5 compiled
    # totals per layer per micro-batch), split by whether an op runs under autograd's engine
    # (an autograd::engine::evaluate_function ancestor in torch.profiler's events): backward; else forward.
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
                     first: bool, last: bool, grad_reduce_dtype: str = "float32") -> list[Comm]:
    """The collectives of a step outside the micro-batches: data-parallel buckets (fp32 buffers,
    sent in `grad_reduce_dtype`), then the loss sum and the gradient norm's square-sum
    (axon.parallel.data_parallel, train, grads)."""
    d, gb = layout.depth, DTYPE_BYTES[grad_reduce_dtype]
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
                comms.append(Comm("all_reduce", ("data",), current * gb, "dp", "backward"))
                current = 0
            current += numel
        comms.append(Comm("all_reduce", ("data",), current * gb, "dp", "backward"))
    gains = (2 * stage_layers + (1 if last else 0)) * shape.hidden // layout.col
    # The loss (fp32) and the clip norm's square-sum (fp64) each travel with the stop-signal vote.
    if layout.data * d > 1:
        comms.append(Comm("all_reduce", ("data", "depth"), gains * gb, "dp", "backward"))
        comms.append(Comm("all_reduce", ("data", "depth"), 2 * 4, "sync", "step"))  # the loss
    if layout.pipe > 1:
        comms.append(Comm("all_reduce", ("pipe",), 2 * 4, "sync", "step"))  # the loss lives on the last stage
    comms += [Comm("all_reduce", (axis,), 2 * 8, "sync", "step") for axis in ("depth", "row", "col", "pipe")
              if getattr(layout, axis) > 1]  # the clip norm
    return comms


def _shard(in_f: int, out_f: int, orientation: str, layout: Layout) -> int:
    li, lo, _, _ = local_dims(layout, in_f, out_f, orientation)
    return padded(li * lo, layout.depth) // layout.depth
