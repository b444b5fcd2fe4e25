"""Memory per device for a layout, by component, in GiB.

fp32 master weights, fp32 gradients and AdamW's two fp32 moments for the local shards;
the gathered weight blocks in flight (the one in use plus `prefetch_distance` ahead); the
activations backward needs, for the recompute choice, times the micro-batches a pipeline
stage keeps in flight (1F1B: up to `pipe` of them on the first stage; interleaved, the peak
of its order's chunks in flight, each 1/v of the stage: 1 + (p - 1) / (p v) times more at
large m, as Megatron-LM states), plus what one backward (or the loss) holds for a moment.
Attention is assumed fused (no [seq, seq] score matrix kept), as on GPUs. `axon dry-run`
measures the same components from the engine on meta tensors.
"""

from __future__ import annotations

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.spec.schedules import in_flight_peak
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

    gathered = gathered_weight_bytes(shape, layout, setup, first, last) + kept_cast_bytes(shape, layout, setup,
                                                                                         stage_layers, last)
    blocks_in_flight = gradient_block_bytes(shape, layout, setup, last)

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
    # inputs, and one block's activations are rebuilt at a time (for one micro-batch: once).
    if setup.recompute == "block":
        held, rebuilt = tokens * (stage_layers * h_c * eb + boundary), tokens * per_layer
    else:
        held, rebuilt = tokens * (stage_layers * per_layer + boundary), 0.0
    # One backward at a time also holds the gradient received from the next stage and the
    # fp32 gradient of a norm's input.
    working = tokens * ((h_c * eb if not last else 0) + h_c * 4)
    transient = rebuilt + working
    if last:
        # The final norm and the softmax are kept, by the one micro-batch in the last chunk at a
        # time (its backward follows its forward); the loss's forward also holds, for a moment,
        # the logits slice. The softmax is exponentiated in place in the max-shifted logits, which
        # are already fp32 (axon.kernels.cross_entropy widens bf16 logits in the subtraction).
        transient = tokens * (norm + v_r * 4) + max(transient, tokens * v_r * eb)
    in_flight = min(layout.pipe, _micro_batches(setup, layout)) if layout.pipe > 1 and first else 1
    if stage is not None and layout.pipe > 1:
        in_flight = min(layout.pipe - stage, _micro_batches(setup, layout))
    if layout.virtual_stages > 1 and (first or stage is not None):
        in_flight = in_flight_peak(stage or 0, layout.pipe, _micro_batches(setup, layout), layout.virtual_stages)
    return {
        "weights": local * 4 / GIB,
        "gradients": local * 4 / GIB,
        "optimizer": local * 8 / GIB,
        "gathered_weights": gathered / GIB,
        "gradient_blocks": blocks_in_flight / GIB,
        "activations": (held * in_flight + transient) / GIB,
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


def gathered_weight_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, first: bool, last: bool) -> float:
    """The most bytes of gathered weights alive at once: the one in use and, with OAG, the
    `prefetch_distance` after it in the order the step gathers them (a block forward, the LM
    head forward and backward, a block backward: enough to see every neighbourhood). Blocks
    come in the compute dtype (gathered from the kept cast shards: kept_cast_bytes); the
    embedding table in fp32 (its gather keeps the master dtype; at depth 1 the table itself is used)."""
    eb, d = DTYPE_BYTES[setup.dtype], layout.depth
    if d == 1:
        return 0.0  # the parameter itself, or its kept cast, is used: nothing is gathered
    table = (shape.vocab // layout.row) * (shape.hidden // layout.col) * 4 if first else 0

    def block(in_f, out_f, orient):
        li, lo, _, _ = local_dims(layout, in_f, out_f, orient)
        return li * lo * eb

    layer = [block(i, o, orient) for _, i, o, orient in block_matrices(shape, False)]
    order = [table] + layer + layer
    if last:
        head = block(shape.hidden, shape.vocab, "normal")
        order += [head, head]
    order += layer[::-1] * 2
    window = setup.prefetch_distance + 1 if d > 1 and "all_gather" in setup.overlap else 1
    return max(sum(order[i:i + window]) for i in range(len(order)))


def gradient_block_bytes(shape: ModelShape, layout: Layout, setup: TrainingSetup, last: bool) -> float:
    """Weight-gradient blocks on their way through the depth reduce-scatter: the padded block
    sent and the shard received, in the reduction dtype, for each in flight (ORS keeps
    REDUCE_SCATTERS_IN_FLIGHT, and one more is issued before the oldest is waited for)."""
    d, gb = layout.depth, DTYPE_BYTES[setup.grad_reduce_dtype]
    if d == 1:
        return 0.0

    def block(in_f, out_f, orient):
        li, lo, _, _ = local_dims(layout, in_f, out_f, orient)
        return padded(li * lo, d) * gb * (1 + 1 / d)

    layer = [block(i, o, orient) for _, i, o, orient in block_matrices(shape, False)][::-1]
    order = ([block(shape.hidden, shape.vocab, "normal")] if last else []) + layer * 2  # backward order
    window = REDUCE_SCATTERS_IN_FLIGHT + 1 if "reduce_scatter" in setup.overlap else 1
    return max(sum(order[i:i + window]) for i in range(len(order)))


def stage_memories(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> dict[tuple, dict[str, float]]:
    """Memory by component for each distinct stage (blocks, first, last) of the parameter-balanced split."""
    micro, _ = setup.micro_batches(layout.data * layout.depth, layout.pipe)
    counts = stage_block_counts(shape, layout.pipe, layout.virtual_stages)
    stages = [(blocks, s == 0, s == layout.pipe - 1) for s, blocks in enumerate(counts)]
    return {stage: memory_per_device(shape, layout, setup, micro, *stage) for stage in dict.fromkeys(stages)}


def fullest(memories) -> dict[str, float]:
    """The stage memory with the largest total: it decides whether a layout fits."""
    return max(memories, key=lambda m: sum(m.values()))


def why_it_does_not_fit(total_gib: float, machine) -> str:
    """One sentence when `total_gib` per device exceeds the usable memory; empty when it fits."""
    limit = machine.memory_gb * machine.usable_memory_fraction
    if total_gib <= limit:
        return ""
    return (f"needs {total_gib:.1f} GiB per device, more than {limit:.1f} GiB usable "
            f"({machine.usable_memory_fraction:.0%} of {machine.memory_gb:g})")


def _micro_batches(setup: TrainingSetup, layout: Layout) -> int:
    plan = setup.micro_batches(layout.data * layout.depth, layout.pipe)
    return plan[1] if plan else 1
