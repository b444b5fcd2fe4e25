"""Search: every layout of a GPU count, the rank orders worth trying, ranked by predicted time.

All factorizations of the GPU count over the five axes (any factors, not only powers of
two) that the model and batch divide. Each is first predicted with the default order
(tensor axes innermost, so their groups stay inside a node); the best `reorder_top` are then
tried with every order of their non-trivial axes, and each layout keeps its best order.
"""

from __future__ import annotations

from itertools import permutations

from perfmodel.layout import AXES, DEFAULT_ORDER, Layout, factorizations
from perfmodel.machine import Machine
from perfmodel.models import ModelShape
from perfmodel.predict import Prediction, predict
from perfmodel.training import TrainingSetup


def layout_problem(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> str | None:
    """Why this layout cannot run this model and batch (one sentence), or None."""
    splits = (("hidden", shape.hidden, "col"), ("heads", shape.heads, "row"), ("kv_heads", shape.kv_heads, "row"),
              ("ffn", shape.ffn, "row"), ("vocab", shape.vocab, "row"))
    for name, value, axis in splits:
        size = getattr(layout, axis)
        if value % size:
            return f"model.{name}={value} is not divisible by {axis}={size}"
    if shape.layers < layout.pipe:  # stages split the blocks unevenly if they must, never to nothing
        return f"model.layers={shape.layers} is not enough for pipe={layout.pipe} stages of a block or more"
    shards = layout.data * layout.depth
    if setup.micro_batches(shards, layout.pipe) is None:
        return (f"global batch {setup.global_batch} does not split into micro-batches of {setup.micro_batch or 'any'} "
                f"over data x depth = {shards}")
    return None


def candidate_orders(layout: Layout) -> list[tuple[str, ...]]:
    """The default order first, then every other order of the axes larger than 1."""
    moving = [axis for axis in DEFAULT_ORDER if getattr(layout, axis) > 1]
    orders = []
    for perm in permutations(moving):
        slots = iter(perm)
        orders.append(tuple(next(slots) if getattr(layout, axis) > 1 else axis for axis in DEFAULT_ORDER))
    return orders


def plan(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup, axes: tuple[str, ...] = AXES,
         reorder_top: int = 48) -> tuple[list[Prediction], dict[str, int]]:
    """Predictions best first (layouts that fit, then those that do not), and how many
    factorizations were ruled out for each reason."""
    ruled_out: dict[str, int] = {}
    first_pass = []
    for layout in factorizations(gpus, axes):
        problem = layout_problem(shape, layout, setup)
        if problem:
            reason = problem.split(" is not")[0].split(" does not")[0]
            ruled_out[reason] = ruled_out.get(reason, 0) + 1
            continue
        first_pass.append(predict(shape, layout, machine, setup))
    first_pass.sort(key=_rank_key)
    best = []
    for index, prediction in enumerate(first_pass):
        if index < reorder_top:
            for order in candidate_orders(prediction.layout)[1:]:
                other = predict(shape, _with_order(prediction.layout, order), machine, setup)
                if other.step_time_s < prediction.step_time_s * (1 - 1e-9):
                    prediction = other
        best.append(prediction)
    best.sort(key=_rank_key)
    return best, ruled_out


def _rank_key(prediction: Prediction):
    return (not prediction.fits, prediction.step_time_s)


def _with_order(layout: Layout, order: tuple[str, ...]) -> Layout:
    return Layout(**layout.sizes(), order=order)
