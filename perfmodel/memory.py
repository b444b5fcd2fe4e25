"""Memory per device for a layout, by component, in GiB.

fp32 master weights, fp32 gradients and AdamW's two fp32 moments for the local shards;
the gathered weight blocks in flight (the one in use plus `prefetch_distance` ahead, in the
order the stage's schedule gathers them, across one micro-batch's forward or backward into
the next); the weight-gradient blocks in their depth reduce-scatter (those in flight carry
from one backward into the next); the activations backward needs, for the recompute
choice, times the micro-batches a pipeline stage keeps in flight (1F1B: p - s on stage s;
interleaved, the peak of its order's chunks in flight, each 1/v of the stage: 1 + (p - 1) /
(p v) times more at large m, as Megatron-LM states), plus what one backward, or the loss,
holds for a moment. Attention is assumed fused (no [seq, seq] score matrix kept), as on
GPUs. `axon dry-run` measures the same components from the engine on meta tensors, stepping
enough of each stage's schedule to reach its peak (tests/planning/test_memory_agreement.py).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import NamedTuple

from axon.spec.layout import DEFAULT_ORDER, Layout
from axon.spec.shapes import ModelShape
from axon.spec.schedules import in_flight_peak, pipeline_order
from axon.spec.stage_split import stage_block_counts
from axon.spec.training import REDUCE_SCATTERS_IN_FLIGHT, TrainingSetup
from perfmodel.workload import DTYPE_BYTES, block_matrices, local_dims, padded, stage_parameters

GIB = 2.0 ** 30


def memory_per_device(shape: ModelShape, layout: Layout, setup: TrainingSetup, micro: int,
                      stage_layers: int, first: bool, last: bool, stage: int | None = None) -> dict[str, float]:
    """`stage` (its index) sets the micro-batches 1F1B keeps in flight there, p - stage; without
    it the first stage's count applies to the first stage, one to the others."""
    eb = DTYPE_BYTES[setup.dtype]
    r, c = layout.row, layout.col
    params = stage_parameters(shape, layout, stage_layers, first, last)
    local = params["sharded"] + params["replicated"]
    tokens = micro * setup.seq_len

    units = schedule_units(layout, _micro_batches(setup, layout), first, last, stage)
    # No rank order changes them: one computation serves a layout's every order (the planner's).
    sizes = layout if layout.order == DEFAULT_ORDER else dataclasses.replace(layout, order=DEFAULT_ORDER)
    gathered = (_gathered_weight_bytes(shape, sizes, setup, first, last, stage_layers, units)
                + kept_cast_bytes(shape, layout, setup, stage_layers, last))
    blocks_in_flight = _gradient_block_bytes(shape, sizes, setup, first, last, stage_layers, units)

    h_c, f_r, v_r = shape.hidden / c, shape.ffn / r, shape.vocab / r
    qkv_r = (shape.hidden + 2 * shape.kv_heads * shape.head_dim) / r
    # RMSNorm works in fp32: it keeps its fp32 input (in an fp32 run, the block input or the
    # residual itself), x / rms (for the gain's gradient), its output in the compute dtype
    # and the 1 / rms of each token.
    norm = (8 + eb) * h_c + 4
    # Saved for backward per token of one layer: two norms; the rotated q and k and v, the
    # attention output and its log-sum-exp (fused attention); SwiGLU's two inputs, gate and product.
    per_layer = 2 * norm + (qkv_r + shape.hidden / r + 4 * f_r) * eb + shape.heads / r * 4
    # What crosses a chunk boundary stays until that micro-batch's backward: each chunk's
    # output (the root its backward starts from) and, except in an fp32 run whose first norm
    # keeps the received tensor itself, its input. Under recompute the input is the first
    # block's saved input already.
    chunks = layout.virtual_stages
    outputs = chunks - (1 if last else 0)
    inputs = chunks - (1 if first else 0) if setup.recompute != "block" and eb != 4 else 0
    boundary = (outputs + inputs) * h_c * eb
    # Each micro-batch in flight keeps what its backward needs; under recompute that is its block
    # inputs, and one block's activations are rebuilt at a time (for one micro-batch: once). In
    # an fp32 run the first norm's fp32 input is the block's input itself.
    if setup.recompute == "block":
        rebuilt = tokens * (per_layer - (4 * h_c if eb == 4 else 0))
        held = tokens * (stage_layers * h_c * eb + boundary)
    else:
        held, rebuilt = tokens * (stage_layers * per_layer + boundary), 0.0
    m = _micro_batches(setup, layout)
    in_flight = min(layout.pipe, m) if layout.pipe > 1 and first else 1
    if stage is not None and layout.pipe > 1:
        in_flight = min(layout.pipe - stage, m)
    if layout.virtual_stages > 1 and (first or stage is not None):
        in_flight = in_flight_peak(stage or 0, layout.pipe, m, layout.virtual_stages)
    # A weight's fp32 gradient without depth (no reduce-scatter takes it: a gradient block
    # otherwise) is a temporary autograd adds into the parameter's, except where the first
    # backward's becomes it (no data-parallel buckets); from the second backward on, with the
    # micro-batches in flight then.
    later = in_flight if layout.data > 1 else min(in_flight, m - 1)
    weight_gradients = layout.depth == 1 and later > 0
    # The stage peaks at one of these moments of one backward (the others' micro-batches in
    # flight holding `held` each), beside the gradient arriving at its block (from the next
    # stage, or from the final norm):
    swiglu = 2 * f_r * eb  # in SwiGLU's backward: two gradients beside the saved tensors, that of
    #                        the product replacing the product
    norm_backward = (12 if eb != 4 else 8) * h_c - 4 * f_r * eb - h_c * eb  # in the second norm's,
    #   the MLP's saved tensors and the norm's output gone: its fp32 arithmetic (the gradient
    #   widened, two products; in an fp32 run the first is the gradient itself)
    moments = [(in_flight, rebuilt + tokens * (h_c * eb + max(swiglu, norm_backward)))]
    if setup.recompute == "block":
        # at the end of the rebuilt forward: its residual sum and the MLP's output as well
        moments.append((in_flight, rebuilt + tokens * 3 * h_c * eb))
    if weight_gradients:
        # the MLP-down layer's weight gradient, the first a block's backward makes, beside the
        # gradient of its input
        down = _matrix(layout, shape.ffn, shape.hidden, "transposed")
        moments.append((later, rebuilt + tokens * (h_c + f_r) * eb + down * 4))
    if last:
        # The loss holds the final norm's saved tensors, the logits slice and its fp32 max-shifted
        # copy (the softmax is exponentiated in place in it: axon.kernels.cross_entropy), and, from
        # the second micro-batch on, the previous one's received input and its gradient, which its
        # loss's graph keeps until this loss replaces it.
        previous = 2 * h_c * eb if not first and m > 1 else 0
        moments.append((in_flight, tokens * (norm + v_r * (4 + eb) + previous)))
        # The head's backward then holds the logits' gradient in the compute dtype, its input's,
        # and the head's fp32 weight gradient (above).
        head = _matrix(layout, shape.hidden, shape.vocab, "normal") * 4 if weight_gradients else 0
        moments.append((later if head else in_flight, tokens * (norm + (v_r + h_c) * eb) + head))
    activations = max(held * count + transient for count, transient in moments)
    return {
        "weights": local * 4 / GIB,
        "gradients": local * 4 / GIB,
        "optimizer": local * 8 / GIB,
        "gathered_weights": gathered / GIB,
        "gradient_blocks": blocks_in_flight / GIB,
        "activations": activations / GIB,
    }


def kept_cast_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, stage_layers: int, last: bool) -> float:
    """A non-fp32 run keeps each linear weight shard's compute-dtype copy through the step
    (axon.parallel.prefetch.cast_shard): one cast per step, not one per use. (The trainer
    casts at every use instead when the copies exceed a tenth of the device's memory, which
    only happens where the fp32 state alone is far past it.)"""
    eb, d = DTYPE_BYTES[setup.dtype], layout.depth
    if eb == 4:
        return 0.0

    def shard(in_f, out_f, orient):
        li, lo, _, _ = local_dims(layout, in_f, out_f, orient)
        return padded(li * lo, d) // d

    per_layer = sum(shard(i, o, orient) for _, i, o, orient in block_matrices(shape, False))
    return (stage_layers * per_layer + (shard(shape.hidden, shape.vocab, "normal") if last else 0)) * eb


def schedule_units(layout: Layout, micro_batches: int, first: bool, last: bool, stage: int | None = None):
    """The unit transitions of the stage's schedule: ((kind, chunk), (kind, chunk)) for each
    forward ("F") or backward ("B") of one micro-batch through one chunk followed by the next
    the stage runs, and the same for backwards alone (reduce-scatters only start in backwards).
    Without `stage`, the first stage's or the last's (a middle stage has both's transitions)."""
    p = layout.pipe
    if stage is None:
        stage = 0 if first or p == 1 else p - 1
    return _unit_pairs(stage, p, micro_batches, layout.virtual_stages)


@lru_cache(maxsize=4096)
def _unit_pairs(stage: int, stages: int, micro_batches: int, chunks: int):
    # Plain 1F1B shows every transition it has within p - s + 1 micro-batches (warm-up, two
    # steady pairs, the drain); interleaved orders need a multiple of p.
    m = micro_batches if chunks > 1 else min(micro_batches, stages - stage + 1)
    full = pipeline_order(stage, stages, m, chunks)
    order = [(kind, chunk) for kind, _, chunk in full]
    # A backward: (chunk, whether it is of the step's last micro-batch, when DP buckets launch).
    backwards = [(chunk, j == m - 1) for kind, j, chunk in full if kind == "B"]
    pairs = set(zip(order, order[1:])) or {(order[0], order[0])}
    backward_pairs = set(zip(backwards, backwards[1:])) or {(backwards[0], None)}
    return tuple(sorted(pairs)), tuple(sorted(backward_pairs, key=str))


def _matrix(layout: Layout, in_f: int, out_f: int, orient: str) -> int:
    li, lo, _, _ = local_dims(layout, in_f, out_f, orient)
    return li * lo


class _Blocks(NamedTuple):
    """What a stage's gathered and gradient blocks depend on besides depth: a rank's elements of
    each block matrix (name, elements) in forward order, of the LM head and of the embedding
    table. Splits of row x col into the same product usually give the same, so the walks below
    are cached on these and not on the axis sizes."""
    matrices: tuple[tuple[str, int], ...]
    head: int
    table: int


@lru_cache(maxsize=4096)
def _blocks(shape: ModelShape, row: int, col: int) -> _Blocks:
    sizes = Layout(row=row, col=col)  # local_dims reads only these
    return _Blocks(tuple((name, _matrix(sizes, i, o, orient)) for name, i, o, orient in block_matrices(shape, False)),
                   _matrix(sizes, shape.hidden, shape.vocab, "normal"), (shape.vocab // row) * (shape.hidden // col))


def _unit_blocks(stage_layers: int, chunks: int, window: int) -> int:
    """Blocks of a chunk the windows below need: enough to see every neighbourhood of `window`
    consecutive matrices (seven a block) inside a unit and across its ends."""
    return max(1, min(stage_layers // chunks, 2 + window // 7))


def gathered_weight_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, first: bool, last: bool,
                          stage_layers: int = 2, units=None) -> float:
    """The most bytes of gathered weights alive at once: the one in use and, with OAG, the
    `prefetch_distance` after it in the order the step gathers them, which runs on from one
    micro-batch's forward or backward into the next the schedule runs (`units`, from
    schedule_units; default: a forward then its backward). A forward gathers the embedding
    table (the model's first chunk), each block's matrices and the LM head (its last); a
    backward the head, then each block's matrices in reverse, after its forward's again under
    recompute. Blocks come in the compute dtype (gathered from the kept cast shards:
    kept_cast_bytes); the embedding table in fp32 (its gather keeps the master dtype; at depth
    1 the table itself is used)."""
    if layout.depth == 1:
        return 0.0  # the parameter itself, or its kept cast, is used: nothing is gathered
    window = setup.prefetch_distance + 1 if "all_gather" in setup.overlap else 1
    chunks = layout.virtual_stages
    blocks = _unit_blocks(stage_layers, chunks, window)
    pairs = ((("F", 0), ("B", 0)),) if units is None else units[0]
    return _gather_peak(_blocks(shape, layout.row, layout.col), setup, chunks, blocks, first, last, pairs)


@lru_cache(maxsize=1 << 16)
def _gather_peak(sizes: _Blocks, setup: TrainingSetup, chunks: int, blocks: int, first: bool, last: bool,
                 pairs) -> float:
    """gathered_weight_bytes' sliding window, cached on what decides it (many layouts share these)."""
    eb = DTYPE_BYTES[setup.dtype]
    window = setup.prefetch_distance + 1 if "all_gather" in setup.overlap else 1
    table = sizes.table * 4
    head = sizes.head * eb
    layer = [numel * eb for _, numel in sizes.matrices]
    again = layer if setup.recompute == "block" else []

    def gathers(kind: str, chunk: int) -> list[float]:
        starts, ends = first and chunk == 0, last and chunk == chunks - 1
        if kind == "F":
            return [table] * starts + layer * blocks + [head] * ends
        return [head] * ends + (again + layer[::-1]) * blocks

    most = 0.0
    for one, two in pairs:
        order = gathers(*one) + gathers(*two)
        alive = sum(order[:window])
        most = max(most, alive)
        for i in range(window, len(order)):  # the window slides on by one gather
            alive += order[i] - order[i - window]
            most = max(most, alive)
    return most


def gradient_block_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, first: bool, last: bool,
                         stage_layers: int = 2, units=None) -> float:
    """Weight-gradient blocks on their way through the depth reduce-scatter, at their peak. Each
    holds the padded block sent and the shard received, in the reduction dtype, and with a
    bf16 reduction the fp32 shard it is widened into; ORS keeps REDUCE_SCATTERS_IN_FLIGHT of
    them, and one more is issued (while its fp32 gradient, cast or padded, is still alive)
    before the oldest is waited for. They carry from one backward into the next the schedule
    runs (`units`); the embedding table's, at the end of the first stage's backward, is
    reduced at once, beside those in flight. In the step's last backward, with data-parallel
    buckets launched during it, a parameter's reductions are waited for when its bucket
    launches, at the next gradient that becomes ready (another reduce-scatter issued, or a
    norm gain's gradient), as if each bucket held one parameter. Without data parallelism the
    first backward's (fp32) shards become the parameters' gradients (counted there); later ones
    are added into them. With a bf16 reduction over data the buckets' bf16 copies, issued
    during the last backward, are alive with them until the step's end."""
    chunks = layout.virtual_stages
    wires = _bucket_wire_bytes(shape, layout, setup, first, last, stage_layers)
    if layout.depth == 1:
        return wires
    blocks = _unit_blocks(stage_layers, chunks, REDUCE_SCATTERS_IN_FLIGHT + 1)
    launching = layout.data > 1 and "data_parallel" in setup.overlap
    # Whether the pairs below may start with the step's first backward, whose fp32 shards become
    # the gradients without data-parallel buckets (plain 1F1B: only one pair, or none, follows it).
    first_is_gradient = layout.data == 1 and chunks == 1 and _micro_batches(setup, layout) <= 2
    most, tail = _scatter_peaks(_blocks(shape, layout.row, layout.col), layout.depth, setup, chunks, blocks,
                                launching, first_is_gradient, first, last, units)
    return max(most, wires + tail)


@lru_cache(maxsize=1 << 16)
def _scatter_peaks(sizes: _Blocks, d: int, setup: TrainingSetup, chunks: int, blocks: int, launching: bool,
                   first_is_gradient: bool, first: bool, last: bool, units) -> tuple[float, float]:
    """gradient_block_bytes' walk through the reduce-scatters: (the peak, what is still pending
    at the step's end), cached on what decides them (many layouts share these)."""
    gb = DTYPE_BYTES[setup.grad_reduce_dtype]

    def block(name, numel: int, synchronous: bool = False) -> tuple:
        """(name, bytes held until waited for, of which the fp32 shard, bytes alive only while it
        is issued, synchronous)."""
        full = padded(numel, d)
        shard = full // d * 4
        held = full * gb + full // d * gb + (shard if gb != 4 else 0)
        return name, held, shard, (numel * 4 if gb != 4 or full != numel else 0), synchronous

    GAIN = None  # a norm gain's gradient: DP buckets may launch there
    limit = REDUCE_SCATTERS_IN_FLIGHT if "reduce_scatter" in setup.overlap else 0

    # A block's backward: the MLP's matrices, its norm's gain, the attention's, its norm's gain.
    matrices = sizes.matrices[::-1]
    mlp = [m for m in matrices if m[0] in ("w2", "w3", "w1")]
    attention = [m for m in matrices if m[0] not in ("w2", "w3", "w1")]
    made: dict = {}

    def scatters(chunk: int, gradients: bool) -> list:
        if (chunk, gradients) not in made:
            order = [block("head", sizes.head), GAIN] * (last and chunk == chunks - 1)
            for b in range(blocks):
                order += [block((b, n), numel) for n, numel in mlp] + [GAIN]
                order += [block((b, n), numel) for n, numel in attention] + [GAIN]
            if first and chunk == 0:
                order += [block("table", sizes.table, True), GAIN]
            made[chunk, gradients] = [item if item is GAIN or not gradients else
                                      (*item[:1], item[1] - item[2], *item[2:]) for item in order]
        return made[chunk, gradients]

    pairs = (((0, True), None),) if units is None else units[1]
    most, tail = 0.0, 0.0
    for one, two in pairs:
        pending: list[tuple] = []  # (name, bytes held)
        copies = 0.0  # the bf16 copies of the buckets launched so far
        for index, (chunk, final) in enumerate([one] + ([two] if two else [])):
            order = scatters(chunk, first_is_gradient and index == 0)
            shards = {item[0]: item[2] for item in order if item is not GAIN}
            buckets = _buckets([item for item in order if item is not GAIN], setup) \
                if final and launching else None
            alive = sum(h for _, h in pending)  # pending's bytes
            for item in order:
                if item is not GAIN:
                    name, held, _, issuing, synchronous = item
                    most = max(most, alive + held + issuing + copies)
                    if not synchronous:
                        pending.append((name, held))
                        alive += held
                if buckets is not None:
                    launched = buckets.event(None if item is GAIN else item[0], item is not GAIN and not item[4])
                    if launched:
                        pending = [(n, h) for n, h in pending if n not in launched]
                        alive = sum(h for _, h in pending)
                        copies += sum(shards[n] for n in launched) / 4 * gb if gb != 4 else 0.0
                if len(pending) > limit:
                    pending = pending[-limit:] if limit else []
                    alive = sum(h for _, h in pending)
        tail = max(tail, sum(h for _, h in pending))
    return most, tail


_gathered_weight_bytes = lru_cache(maxsize=1 << 16)(gathered_weight_bytes)
_gradient_block_bytes = lru_cache(maxsize=1 << 16)(gradient_block_bytes)


class _buckets:
    """The data-parallel buckets of a stage's depth-sharded parameters (`order`: backward order,
    which is the buckets' reverse module order), launched as axon.parallel.data_parallel does in
    the step's last backward: a bucket once each of its parameters' gradients is ready, at the
    next event after the one that completed it if that was a reduce-scatter still in flight, and
    in order. `event` returns the parameters whose reductions the launches waited for."""

    def __init__(self, order, setup: TrainingSetup):
        limit, self.of, self.missing, size = setup.bucket_mb * 2 ** 20, {}, [], 0.0
        for name, _, shard, _, _ in order:
            if not self.missing or (size and size + shard > limit):
                self.missing.append(0)
                size = 0.0
            self.of[name] = len(self.missing) - 1
            self.missing[-1] += 1
            size += shard
        self.members = [[n for n, b in self.of.items() if b == i] for i in range(len(self.missing))]
        self.ready_at: list = [None] * len(self.missing)
        self.events = self.next = 0

    def event(self, name, from_reduce_scatter: bool) -> set:
        self.events += 1
        if name is not None:
            bucket = self.of[name]
            self.missing[bucket] -= 1
            if self.missing[bucket] == 0:
                self.ready_at[bucket] = (self.events, from_reduce_scatter)
        launched = set()
        while self.next < len(self.missing) and self.ready_at[self.next] is not None:
            if self.ready_at[self.next] == (self.events, True):
                break
            launched.update(self.members[self.next])
            self.next += 1
        return launched


def _bucket_wire_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, first: bool, last: bool,
                       stage_layers: int) -> float:
    """The bf16 copies of the data-parallel gradient buckets (axon.parallel.data_parallel), all
    alive at the end of the step's last backward; none with an fp32 reduction (the buffer
    itself is sent)."""
    gb = DTYPE_BYTES[setup.grad_reduce_dtype]
    if gb == 4:
        return 0.0
    params = stage_parameters(shape, layout, stage_layers, first, last)
    sharded = params["sharded"] if layout.data > 1 else 0.0
    replicated = params["replicated"] if layout.data * layout.depth > 1 else 0.0
    return (sharded + replicated) * gb


def stage_memories(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> dict[tuple, dict[str, float]]:
    """Memory by component for each distinct stage (blocks, first, last) of the parameter-balanced split."""
    micro, _ = setup.micro_batches(layout.data * layout.depth, layout.pipe)
    counts = stage_block_counts(shape, layout.pipe, layout.virtual_stages)
    stages = [(blocks, s == 0, s == layout.pipe - 1) for s, blocks in enumerate(counts)]
    return {stage: stage_memory(shape, layout, setup, micro, *stage) for stage in dict.fromkeys(stages)}


def stage_memory(shape: ModelShape, layout: Layout, setup: TrainingSetup, micro: int, stage_layers: int,
                 first: bool, last: bool) -> dict[str, float]:
    """memory_per_device (no stage index), worked out once per layout's sizes: no rank order
    changes it, and the planner asks for it in its memory check and again in predictions."""
    sizes = layout if layout.order == DEFAULT_ORDER else dataclasses.replace(layout, order=DEFAULT_ORDER)
    return dict(_stage_memory(shape, sizes, setup, micro, stage_layers, first, last))


@lru_cache(maxsize=1 << 15)
def _stage_memory(shape: ModelShape, layout: Layout, setup: TrainingSetup, micro: int, stage_layers: int,
                  first: bool, last: bool) -> dict[str, float]:
    return memory_per_device(shape, layout, setup, micro, stage_layers, first, last)


def fullest(memories) -> dict[str, float]:
    """The stage memory with the largest total: it decides whether a layout fits."""
    return max(memories, key=lambda m: sum(m.values()))


def why_it_does_not_fit(total_gib: float, machine) -> str:
    """One sentence when `total_gib` per device exceeds the usable memory; empty when it fits."""
    limit = machine.usable_gib
    if total_gib <= limit:
        return ""
    return (f"needs {total_gib:.1f} GiB per device, more than {limit:.1f} GiB usable "
            f"({machine.usable_memory_fraction:.0%} of {machine.memory_gb:g})")


def _micro_batches(setup: TrainingSetup, layout: Layout) -> int:
    plan = setup.micro_batches(layout.data * layout.depth, layout.pipe)
    return plan[1] if plan else 1
