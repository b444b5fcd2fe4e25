"""What a layout must satisfy to run a model and batch: the one rule that the engine's
config check (axon.config.check_layout) and the planner's search both apply."""

from __future__ import annotations

from dataclasses import dataclass

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.spec.training import split_micro_batches


@dataclass(frozen=True)
class LayoutProblem:
    reason: str  # what rules the layout out, the same for every layout it rules out: "model.heads=64"
    sentence: str  # one sentence for the user, naming the keys and the numbers


def model_splits(shape: ModelShape) -> tuple[tuple[str, int, str], ...]:
    """(model key, width, the axis that splits it). Normal layers split their output over row
    and their input over col, transposed ones the reverse, so each width has one axis."""
    return (("hidden", shape.hidden, "col"), ("heads", shape.heads, "row"), ("kv_heads", shape.kv_heads, "row"),
            ("ffn", shape.ffn, "row"), ("vocab", shape.vocab, "row"))


def find_layout_problem(shape: ModelShape, layout: Layout, global_batch: int, micro_batch: int) -> LayoutProblem | None:
    """The first rule this layout breaks for this model and batch, or None."""
    for key, width, axis in model_splits(shape):
        size = getattr(layout, axis)
        if width % size:
            return LayoutProblem(f"model.{key}={width}",
                                 f"model.{key}={width} is not divisible by layout.{axis}={size}, which splits it")
    if shape.layers < layout.pipe:  # stages split the blocks unevenly if they must, never to nothing
        return LayoutProblem(f"model.layers={shape.layers}", f"layout.pipe={layout.pipe} stages need at least one "
                                                              f"block each, but model.layers={shape.layers}")
    v = layout.virtual_stages
    if v > 1 and layout.pipe == 1:
        return LayoutProblem("layout.virtual_stages", f"layout.virtual_stages={v} interleaves pipeline stages, "
                                                      f"but layout.pipe=1")
    if shape.layers < layout.pipe * v:
        return LayoutProblem(f"model.layers={shape.layers}",
                             f"layout.pipe x layout.virtual_stages = {layout.pipe} x {v} = {layout.pipe * v} chunks "
                             f"need at least one block each, but model.layers={shape.layers}")
    shards = layout.data * layout.depth
    if global_batch % shards:
        return LayoutProblem(f"train.global_batch={global_batch}",
                             f"train.global_batch={global_batch} is not divisible by layout.data x layout.depth = "
                             f"{layout.data} x {layout.depth} = {shards}")
    if split_micro_batches(global_batch, micro_batch, shards, layout.pipe) is None:
        per_shard = global_batch // shards
        return LayoutProblem(f"train.micro_batch={micro_batch}",
                             f"train.micro_batch={micro_batch} does not divide the {per_shard} sequences each data x "
                             f"depth shard gets per step (train.global_batch={global_batch} / {shards} shards)")
    _, count = split_micro_batches(global_batch, micro_batch, shards, layout.pipe)
    if v > 1 and count % layout.pipe:
        return LayoutProblem(f"train.micro_batch={micro_batch}",
                             f"layout.virtual_stages={v} runs micro-batches in groups of layout.pipe={layout.pipe}, "
                             f"but train.micro_batch={micro_batch} gives {count} per data x depth shard, not a "
                             f"multiple of {layout.pipe}")
    return None
