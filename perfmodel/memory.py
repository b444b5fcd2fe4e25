"""Memory per device for a layout, by component, in GiB.

fp32 master weights, fp32 gradients and AdamW's two fp32 moments for the local shards;
the gathered weight blocks in flight (the one in use plus `prefetch_distance` ahead); the
activations backward needs, for the recompute choice, times the micro-batches a pipeline
stage keeps in flight (1F1B: up to `pipe` of them on the first stage). Attention is assumed
fused (no [seq, seq] score matrix kept), as on GPUs.
"""

from __future__ import annotations

from perfmodel.layout import Layout
from perfmodel.models import ModelShape
from perfmodel.stages import balanced_counts
from perfmodel.training import TrainingSetup
from perfmodel.workload import DTYPE_BYTES, block_matrices, local_dims, stage_parameters

GIB = 2.0 ** 30


def memory_per_device(shape: ModelShape, layout: Layout, setup: TrainingSetup, micro: int,
                      stage_layers: int, first: bool, last: bool) -> dict[str, float]:
    eb = DTYPE_BYTES[setup.dtype]
    r, c, d = layout.row, layout.col, layout.depth
    params = stage_parameters(shape, layout, stage_layers, first, last)
    local = params["sharded"] + params["replicated"]
    tokens = micro * setup.seq_len

    gathered = 0.0
    if d > 1 or eb != 4:  # a depth gather (or a cast to bf16) materializes a whole block
        largest = max(local_dims(layout, i, o, orient)[0] * local_dims(layout, i, o, orient)[1]
                      for _, i, o, orient in block_matrices(shape, last))
        gathered = (setup.prefetch_distance + 1 if "all_gather" in setup.overlap else 1) * largest * eb

    h_c, f_r = shape.hidden / c, shape.ffn / r
    qkv_r = (shape.hidden + 2 * shape.kv_heads * shape.head_dim) / r
    # Saved for backward per token of one layer: block input, two norm outputs, q/k/v and their
    # rotated copies, attention output, the residual, SwiGLU's two inputs, gate and product.
    per_layer = (4 * h_c + 2 * qkv_r + shape.hidden / r + 4 * f_r) * eb
    if setup.recompute == "block":  # keep block inputs; one block's activations rebuilt at a time
        activations = tokens * (stage_layers * h_c * eb + per_layer)
    else:
        activations = tokens * stage_layers * per_layer
    if last:  # fp32 logits slice and the saved softmax
        activations += tokens * (shape.vocab / r) * 4 * 2
    in_flight = min(layout.pipe, _micro_batches(setup, layout)) if layout.pipe > 1 and first else 1
    return {
        "weights": local * 4 / GIB,
        "gradients": local * 4 / GIB,
        "optimizer": local * 8 / GIB,
        "gathered_weights": gathered / GIB,
        "activations": activations * in_flight / GIB,
    }


def stage_memories(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> dict[tuple, dict[str, float]]:
    """Memory by component for each distinct stage (blocks, first, last) of the parameter-balanced split."""
    micro, _ = setup.micro_batches(layout.data * layout.depth, layout.pipe)
    stages = [(blocks, s == 0, s == layout.pipe - 1) for s, blocks in enumerate(balanced_counts(shape, layout.pipe))]
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
