"""Replay the 1F1B schedule (axon.spec.schedules) with per-stage forward and backward
times: the step time and bubble the model predicts come from the engine's own order,
including uneven stages (the first holds the embedding, the last the head and the loss) and
the point-to-point latency between them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from axon.spec.schedules import one_f_one_b_with_transfers, pipeline_order


@dataclass(frozen=True)
class Timeline:
    step_s: float  # from the first forward's start to the last backward's end
    busy_s: tuple[float, ...]  # per stage: seconds computing

    @property
    def idle_fraction(self) -> tuple[float, ...]:
        """Per stage: the share of the step it waits (the bubble, plus any imbalance)."""
        return tuple(1.0 - busy / self.step_s for busy in self.busy_s)


def simulate(forward_s: list[float], backward_s: list[float], micro_batches: int, p2p_s: float = 0.0) -> Timeline:
    """Replay 1F1B: stage s's ("F", j) starts once the stage is free and stage s-1's ("F", j)
    has arrived; ("B", j) once stage s+1's ("B", j) has (the last stage: its own ("F", j))."""
    stages = len(forward_s)
    orders = _plain_orders(stages, micro_batches)
    # ends_*[s][j]: when stage s finished that op (-1: not yet). Flat lists and plain floats:
    # a plan replays thousands of schedules of up to 2 x p x m ops.
    ends_f = [[-1.0] * micro_batches for _ in range(stages)]
    ends_b = [[-1.0] * micro_batches for _ in range(stages)]
    position, free = [0] * stages, [0.0] * stages
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for s in range(stages):
            order, at, clock = orders[s], position[s], free[s]
            f, b, mine_f, mine_b = forward_s[s], backward_s[s], ends_f[s], ends_b[s]
            from_f = ends_f[s - 1] if s > 0 else None  # forwards wait for the stage before
            from_b = ends_b[s + 1] if s < stages - 1 else None  # backwards for the stage after
            while at < len(order):
                forward, j = order[at]
                source = from_f if forward else from_b
                if source is not None:
                    arrived = source[j]
                    if arrived < 0:
                        break  # waits on a neighbour; try the other stages
                    if arrived + p2p_s > clock:
                        clock = arrived + p2p_s
                if forward:
                    clock += f
                    mine_f[j] = clock
                else:
                    clock += b
                    mine_b[j] = clock
                at += 1
            remaining -= at - position[s]
            progressed |= at > position[s]
            position[s], free[s] = at, clock
        if not progressed:
            raise RuntimeError("1F1B schedule deadlocked")  # cannot happen for one_f_one_b orders
    busy = tuple(micro_batches * (f + b) for f, b in zip(forward_s, backward_s))
    return Timeline(max(free), busy)


@lru_cache(maxsize=256)
def _plain_orders(stages: int, micro_batches: int) -> tuple[tuple[tuple[bool, int], ...], ...]:
    """Each stage's 1F1B order as (forward?, micro-batch): a plan replays thousands of layouts
    on the same few (stages, micro-batches), and building the orders took half a replay."""
    return tuple(tuple((kind == "F", j) for kind, j, _ in pipeline_order(s, stages, micro_batches))
                 for s in range(stages))


def simulate_interleaved(forward_s: list[float], backward_s: list[float], stages: int, micro_batches: int,
                         p2p_s: float = 0.0) -> Timeline:
    """Replay interleaved 1F1B as the engine runs it, transfers included: forward_s[q] and
    backward_s[q] are virtual stage q's times (chunk c of stage s is q = c p + s). A stage
    computes in its order; a batch of transfers completes p2p_s after the last of its
    operations and their partners has been issued (what NCCL does), so a send waits for its
    receiver to get there, and the unit batching's delays are in the timeline."""
    chunks = len(forward_s) // stages
    plans, operations = _interleaved_plans(stages, micro_batches, chunks)
    times = [forward_s, backward_s]
    issued = [-1.0] * operations  # when each operation's batch was issued (-1: not yet)
    position, clock = [0] * stages, [0.0] * stages
    remaining = sum(len(plan) for plan in plans)
    while remaining:
        progressed = False
        for s in range(stages):
            plan, at, now = plans[s], position[s], clock[s]
            while at < len(plan):
                action = plan[at]
                if action[0] >= 0:  # compute: (backward?, virtual stage)
                    now += times[action[0]][action[1]]
                else:  # a batch: (-1, (own operation, its partner), ...)
                    latest = now
                    for own, partner in action[1:]:
                        if issued[own] < 0:
                            issued[own] = now
                    for _, partner in action[1:]:
                        if issued[partner] < 0:
                            latest = -1.0
                            break
                        latest = max(latest, issued[partner])
                    if latest < 0:
                        break  # a peer has not reached the matching batch yet
                    now = latest + p2p_s
                at += 1
            remaining -= at - position[s]
            progressed |= at > position[s]
            position[s], clock[s] = at, now
        if not progressed:
            raise RuntimeError("interleaved schedule deadlocked")  # tests/spec/test_deadlock_check.py rules this out
    busy = tuple(micro_batches * sum(forward_s[c * stages + s] + backward_s[c * stages + s] for c in range(chunks))
                 for s in range(stages))
    return Timeline(max(clock), busy)


@lru_cache(maxsize=256)
def _interleaved_plans(stages: int, micro_batches: int, chunks: int) -> tuple[list[tuple], int]:
    """The engine's actions per stage as small tuples for the replay: (0 or 1, virtual stage)
    for a forward or backward, (-1, (operation, partner), ...) for a batch, operations numbered."""
    numbers: dict[tuple[str, str], int] = {}
    partner_op = {"send": "recv", "recv": "send"}

    def number(key):
        return numbers.setdefault(key, len(numbers))

    plans = []
    for s in range(stages):
        plan = []
        for action in one_f_one_b_with_transfers(s, stages, micro_batches, chunks):
            if isinstance(action[0], str):
                plan.append((int(action[0] == "B"), action[2] * stages + s))
            else:
                keys = [(t.op, t.label(s, stages)) for t in action]
                plan.append((-1, *((number(k), number((partner_op[k[0]], k[1]))) for k in keys)))
        plans.append(plan)
    return plans, len(numbers)


# Schedules longer than this are estimated, not replayed: a choice of planning speed over a few
# percent, as the estimate stays within 3% of the replay for stages like the engine's
# (tests/spec/test_pipeline.py::test_long_schedules_are_estimated_within_3_percent_of_the_replay).
REPLAY_OPS = 20_000


def step_seconds(forward_s: list[float], backward_s: list[float], micro_batches: int, stages: int = 0,
                 p2p_s: float = 0.0) -> float:
    """The 1F1B step: replayed by `simulate` up to REPLAY_OPS operations, else estimated as
    every stage's slot once plus m - 1 slots of the slowest stage (the critical path when the
    slowest stage never waits; within 3% of the replay for stages like the engine's: even
    middles, a heavier first and last).

    Interleaved (times per virtual stage, `stages` < their number): `simulate_interleaved`,
    else estimated as m slots of the slowest stage (all its chunks) plus p - 1 of the slowest
    chunk: the bubble shrinks by v."""
    return _step_seconds(tuple(forward_s), tuple(backward_s), micro_batches, stages or len(forward_s), p2p_s)


@lru_cache(maxsize=4096)  # a plan prices many rank orders whose stages take the same times
def _step_seconds(forward_s: tuple[float, ...], backward_s: tuple[float, ...], micro_batches: int, stages: int,
                  p2p_s: float) -> float:
    slots = [f + b for f, b in zip(forward_s, backward_s)]
    if stages < len(forward_s):
        if 2 * len(forward_s) * micro_batches <= REPLAY_OPS:
            return simulate_interleaved(list(forward_s), list(backward_s), stages, micro_batches, p2p_s).step_s
        per_stage = [sum(slots[s::stages]) for s in range(stages)]
        return micro_batches * max(per_stage) + (stages - 1) * (max(slots) + 2 * p2p_s)
    if 2 * len(forward_s) * micro_batches <= REPLAY_OPS:
        return simulate(forward_s, backward_s, micro_batches, p2p_s).step_s
    return sum(slots) + (micro_batches - 1) * max(slots) + 2 * (stages - 1) * p2p_s
