"""Search: every layout of a GPU count at its best rank order, ranked by predicted time.

All factorizations of the GPU count over the five axes (any factors, not only powers of
two) that the model and batch divide, pipelined ones also interleaved (layout.virtual_stages
in VIRTUAL_STAGES, where the layers and micro-batches allow); each layout's time is its best
over every order of its axes larger than 1. Layouts that fit in memory rank first. Two ways to the same ranking:
* exhaustive: every layout that fits priced with every order (the reference, slow at
  scale); one that does not fit keeps the default order, as no order changes its memory;
* fast: orders that place every group alike are priced once (a rank order changes a
  prediction only through its groups' placements), and for the best `top` only: layouts
  that cannot fit are set aside by their memory, which no order changes, and the rest are
  priced best-first by their closed-form bounds (perfmodel.bound: compute, the collectives
  no overlap hides on links no order beats, the bubble they imply, the optimizer) until the
  bound of the next one is no better than the `top`-th time found; within a layout, an
  order is priced only if its own bound (its groups where it puts them) can still win, and
  replayed only if its time without the bubble can.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from dataclasses import dataclass
from itertools import permutations

from perfmodel.collectives import PRICED_GROUPS, Placement, group_placement
from axon.spec.layout_rules import find_layout_problem
from axon.spec.layout import AXES, DEFAULT_ORDER, Layout, factorizations
from perfmodel.bound import StepBound
from perfmodel.machine import Machine
from perfmodel.memory import fullest, stage_memories, why_it_does_not_fit
from axon.spec.shapes import ModelShape
from perfmodel.predict import Prediction, predict
from axon.spec.training import TrainingSetup, split_micro_batches

# Interleaved 1F1B's chunks per stage tried on every pipelined layout: v = 2 takes most of the
# bubble's shrinking ((p - 1) / m to (p - 1) / (v m), Narayanan et al., SC21, section 2.2.2); each
# doubling doubles the point-to-point traffic.
VIRTUAL_STAGES = (1, 2, 4)


@dataclass
class PlanResult:
    predictions: list[Prediction]  # best first: layouts that fit, then those that do not
    ruled_out: dict[str, int]  # factorizations the model or batch does not divide, by reason
    dividing: int  # layouts the model and batch divide
    fitting: int  # of those, layouts that fit in memory
    priced: int  # predictions made


def layout_problem(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> str | None:
    """Why this layout cannot run this model and batch (one sentence), or None."""
    problem = find_layout_problem(shape, layout, setup.global_batch, setup.micro_batch)
    return problem.sentence if problem else None


def candidate_orders(layout: Layout) -> list[tuple[str, ...]]:
    """The default order first, then every other order of the axes larger than 1."""
    moving = [axis for axis in DEFAULT_ORDER if getattr(layout, axis) > 1]
    orders = []
    for perm in permutations(moving):
        slots = iter(perm)
        orders.append(tuple(next(slots) if getattr(layout, axis) > 1 else axis for axis in DEFAULT_ORDER))
    return orders


def plan(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup, axes: tuple[str, ...] = AXES,
         top: int | None = None, exhaustive: bool = False) -> tuple[list[Prediction], dict[str, int]]:
    """`search`'s predictions and ruled-out counts."""
    result = search(shape, gpus, machine, setup, axes, top, exhaustive)
    return result.predictions, result.ruled_out


def search(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup, axes: tuple[str, ...] = AXES,
           top: int | None = None, exhaustive: bool = False,
           virtual_stages: tuple[int, ...] = VIRTUAL_STAGES) -> PlanResult:
    """The best `top` layouts (every layout when None), each at its best order. A pipelined
    layout is also tried interleaved at each of `virtual_stages` its layers and micro-batches
    allow (those that do not are skipped, not counted as ruled out)."""
    setup = _SplitOnce.of(setup)
    layouts, ruled_out = [], {}
    for layout in factorizations(gpus, axes):
        problem = find_layout_problem(shape, layout, setup.global_batch, setup.micro_batch)
        if problem:
            ruled_out[problem.reason] = ruled_out.get(problem.reason, 0) + 1
            continue
        layouts.append(layout)
        for v in (v for v in virtual_stages if v > 1 and layout.pipe > 1):
            interleaved = dataclasses.replace(layout, virtual_stages=v)
            if not find_layout_problem(shape, interleaved, setup.global_batch, setup.micro_batch):
                layouts.append(interleaved)
    pricer = _Pricer(shape, machine, setup, exhaustive)
    if exhaustive or top is None:
        ranked = sorted((pricer.best(layout) for layout in layouts), key=_rank_key)
        return PlanResult(ranked[:top], ruled_out, len(layouts), sum(p.fits for p in ranked), pricer.calls)
    fit = {layout: fits_in_memory(shape, layout, machine, setup) for layout in layouts}
    ranked = _best_first([lay for lay in layouts if fit[lay]], top, pricer.step_bound, pricer.best)
    if len(ranked) < top:  # too few fit: the rest of the table is the fastest that do not, uninterleaved
        # (interleaving only adds activations, so an interleaved layout never fits where its plain one does not),
        # each in the default order: its own closed-form bound first
        ranked += _best_first([lay for lay in layouts if not fit[lay] and lay.virtual_stages == 1], top - len(ranked),
                              pricer.default_order_bound, lambda layout, _: pricer.predict(layout))
    ranked.sort(key=_rank_key)
    return PlanResult(ranked[:top], ruled_out, len(layouts), sum(fit.values()), pricer.calls)


@dataclass(frozen=True)
class _SplitOnce(TrainingSetup):
    """The setup, remembering its micro-batch splits: the memory check, the bounds and every
    prediction ask for the same few (shards, pipe) thousands of times, and an automatic split
    walks every size up to the shard's batch (131,072 for 320B on 32,768 GPUs: seconds a plan)."""

    @classmethod
    def of(cls, setup: TrainingSetup) -> _SplitOnce:
        return cls(**{field.name: getattr(setup, field.name) for field in dataclasses.fields(setup)})

    def micro_batches(self, shards: int, pipe: int) -> tuple[int, int] | None:
        return _split(self.global_batch, self.micro_batch, shards, pipe)


@functools.lru_cache(maxsize=4096)
def _split(global_batch: int, micro_batch: int, shards: int, pipe: int) -> tuple[int, int] | None:
    return split_micro_batches(global_batch, micro_batch, shards, pipe)


def fits_in_memory(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainingSetup) -> bool:
    """predict's memory verdict without its timing: the fullest stage against the usable memory.
    No rank order changes it, so one check per layout serves every order."""
    return not why_it_does_not_fit(need_gib(shape, layout, setup), machine)


def need_gib(shape: ModelShape, layout: Layout, setup: TrainingSetup) -> float:
    """Memory per device of the layout's fullest stage, each with the micro-batches its schedule keeps in flight."""
    return sum(fullest(stage_memories(shape, layout, setup).values()).values())


class _Pricer:
    """Prices layouts at their best order, counting predictions."""

    def __init__(self, shape: ModelShape, machine: Machine, setup: TrainingSetup, exhaustive: bool):
        self.shape, self.machine, self.setup, self.exhaustive = shape, machine, setup, exhaustive
        self.step_bound = StepBound(shape, machine, setup)
        self.placement_of: dict[tuple, Placement] = {}  # (size, stride) of a group's axes -> its placement
        self.calls = 0

    def predict(self, layout: Layout, machine: Machine | None = None, replay_pipeline: bool = True) -> Prediction:
        self.calls += 1
        return predict(self.shape, layout, machine or self.machine, self.setup, replay_pipeline)

    def default_order_bound(self, layout: Layout) -> float:
        """No shorter than `layout`'s prediction in its own order."""
        placements = self._placements(layout, layout.order)
        return self.step_bound(layout, dict(zip(("pipe", "depth", "row", "col"), placements[1:5])))

    def best(self, layout: Layout, cutoff: float = float("inf")) -> Prediction | None:
        """The layout at its fastest order; the default order wins ties. A layout that does not
        fit keeps the default order: no order changes its memory. None when no order can take
        less than `cutoff`: each order's own closed-form bound (its groups where that order puts
        them), or its time without the bubble, says so before it is replayed or priced."""
        orders, placements = self._orders(layout)
        if self.exhaustive:  # the reference: no bound, interleaved orders tried by their time without the bubble
            unreplayed = {index: self.predict(ordered, replay_pipeline=False) for index, ordered in enumerate(orders)} \
                if layout.virtual_stages > 1 else {}
            bounds = [unreplayed[index].step_time_s if unreplayed else 0.0 for index in range(len(orders))]
        else:
            unreplayed = {}
            bounds = [self.step_bound(ordered, dict(zip(("pipe", "depth", "row", "col"), places[1:5])))
                      for ordered, places in zip(orders, placements)]
        if layout.virtual_stages == 1:
            best = None
            for index, ordered in enumerate(orders):
                limit = cutoff if best is None else min(cutoff, best.step_time_s * (1 - 1e-9))
                if bounds[index] >= limit:
                    continue
                if layout.pipe > 1 and (best is not None or cutoff < float("inf")):
                    without_bubble = self.predict(ordered, replay_pipeline=False).step_time_s
                    if without_bubble > cutoff or best is not None and without_bubble >= limit:
                        continue  # slower even without its bubble: the replay cannot make it win
                prediction = self.predict(ordered)
                if best is None and not prediction.fits:
                    return prediction
                if best is None or prediction.step_time_s < best.step_time_s * (1 - 1e-9):
                    best = prediction
            return best
        # Interleaved: replaying an order is the costly part, so orders go from the most
        # promising bound, and are replayed only while their time without the bubble can win.
        best, best_index = None, -1
        for index in sorted(range(len(orders)), key=lambda index: (bounds[index], index)):
            limit = cutoff if best is None else min(cutoff, best.step_time_s * (1 - 1e-9))
            if bounds[index] >= limit and (best is None or index > best_index):
                continue
            if index not in unreplayed:
                unreplayed[index] = self.predict(orders[index], replay_pipeline=False)
            if not unreplayed[index].fits:
                return self.predict(layout)
            if unreplayed[index].step_time_s >= limit and (best is None or index > best_index):
                continue
            prediction = self.predict(orders[index])
            if best is None or prediction.step_time_s < best.step_time_s * (1 - 1e-9) or \
                    (prediction.step_time_s <= best.step_time_s * (1 + 1e-9) and index < best_index):
                best, best_index = prediction, index
        return best

    def _orders(self, layout: Layout) -> tuple[list[Layout], list[tuple]]:
        """The layout in each candidate order, and where each order puts the PRICED_GROUPS; the
        fast plan keeps one order of those that place every group alike (the same prediction)."""
        orders, placements, seen = [], [], set()
        for order in candidate_orders(layout):
            places = self._placements(layout, order)
            if not self.exhaustive:
                if places in seen:
                    continue
                seen.add(places)
            orders.append(layout if order == layout.order else dataclasses.replace(layout, order=order))
            placements.append(places)
        return orders, placements

    def _placements(self, layout: Layout, order: tuple[str, ...]) -> tuple:
        """group_placement of each of PRICED_GROUPS in `order`. Which ranks form a group depends
        only on its axes' sizes and strides, so placements are kept by those for the search."""
        strides, step = {}, 1
        for axis in reversed(order):
            strides[axis] = step
            step *= getattr(layout, axis)
        places = []
        for axes in PRICED_GROUPS:
            members = tuple(sorted((size, strides[axis]) for axis in axes if (size := getattr(layout, axis)) > 1))
            if members not in self.placement_of:
                self.placement_of[members] = group_placement(dataclasses.replace(layout, order=order), axes,
                                                             self.machine)
            places.append(self.placement_of[members])
        return tuple(places)


def _best_first(layouts: list[Layout], count: int, bound, price) -> list[Prediction]:
    """The `count` fastest of `layouts`, fastest first (ties: the earlier in `layouts`), pricing
    them (`price(layout, cutoff)`: None when it cannot beat `cutoff`) in the order of their
    closed-form bounds (perfmodel.bound: no prediction) and stopping once a bound is no better
    than the `count`-th time found. Most layouts never come up: their bound is already too
    slow; of those that do, `_Pricer.best` prices only the orders whose own bounds can still
    beat that time."""
    line = [(bound(layout), index) for index, layout in enumerate(layouts)]
    heapq.heapify(line)
    kept: list[tuple[float, int, Prediction]] = []  # a heap of the best `count`, slowest on top
    while line:
        bound, index = heapq.heappop(line)
        if len(kept) == count and bound >= -kept[0][0]:
            break
        prediction = price(layouts[index], -kept[0][0] if len(kept) == count else float("inf"))
        if prediction is None:
            continue  # no order of it can make the table
        entry = (-prediction.step_time_s, -index, prediction)
        if len(kept) < count:
            heapq.heappush(kept, entry)
        elif entry > kept[0]:
            heapq.heapreplace(kept, entry)
    return [prediction for _, _, prediction in sorted(kept, key=lambda entry: entry[:2], reverse=True)]


def _rank_key(prediction: Prediction):
    return (not prediction.fits, prediction.step_time_s)
