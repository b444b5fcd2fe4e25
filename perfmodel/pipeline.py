"""The 1F1B pipeline schedule: the order each stage runs, its transfers, and its timeline.

The engine runs exactly `one_f_one_b_with_transfers` (axon.parallel.pipeline imports it):
the compute order of `one_f_one_b` with the sends and receives between neighbouring stages
placed and batched. `simulate` replays the compute order with per-stage forward and
backward times, so the bubble the model predicts comes from the same schedule, including
uneven stages (the first holds the embedding, the last the head and the loss) and the
point-to-point latency between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order of ("F", j) forwards and ("B", j) backwards stage `stage` of `stages` runs.

    Stage s runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
    backward, then drains the remaining backwards: at most p - s micro-batches in flight.
    """
    warmup = min(stages - stage - 1, micro_batches)
    order = [("F", j) for j in range(warmup)]
    for j in range(micro_batches - warmup):
        order += [("F", warmup + j), ("B", j)]
    order += [("B", j) for j in range(micro_batches - warmup, micro_batches)]
    return order


@dataclass(frozen=True)
class Transfer:
    """One point-to-point operation of a stage: send or receive the activations ("act") of
    micro-batch `micro` or their gradient ("grad")."""

    op: str  # "send" | "recv"
    tensor: str  # "act" | "grad"
    micro: int

    @property
    def toward(self) -> int:
        """+1: the next stage; -1: the previous one (activations flow forward, gradients back)."""
        return 1 if (self.op == "send") == (self.tensor == "act") else -1


def one_f_one_b_with_transfers(stage: int, stages: int, micro_batches: int) -> list:
    """`one_f_one_b`'s compute order with its transfers: ("F", j) and ("B", j) entries, and
    tuples of `Transfer`s, each tuple issued as one batch and waited for before going on.

    Megatron-LM's pairing: in the steady state a stage's send forward runs beside its receive
    backward (both with the next stage) and its send backward beside its receive forward
    (both with the previous one), so two neighbours never each wait on a send the other has
    queued behind its own. Warm-up and cool-down transfers run alone: there a stage only
    sends toward a neighbour that is already waiting to receive it.
    """
    first, last = stage == 0, stage == stages - 1
    warmup = min(stages - stage - 1, micro_batches)
    steady = micro_batches - warmup
    actions: list = []

    def batch(*transfers: Transfer | None) -> None:
        ops = tuple(t for t in transfers if t is not None)
        if ops:
            actions.append(ops)

    def recv_act(j):
        return None if first else Transfer("recv", "act", j)

    def send_act(j):
        return None if last else Transfer("send", "act", j)

    def recv_grad(j):
        return None if last else Transfer("recv", "grad", j)

    def send_grad(j):
        return None if first else Transfer("send", "grad", j)

    for j in range(warmup):
        batch(recv_act(j))
        actions.append(("F", j))
        batch(send_act(j))
    if steady:
        batch(recv_act(warmup))
    for i in range(steady):
        j = warmup + i
        actions.append(("F", j))
        batch(send_act(j), recv_grad(i))
        actions.append(("B", i))
        batch(send_grad(i), recv_act(j + 1) if i < steady - 1 else None)
    for i in range(steady, micro_batches):
        batch(recv_grad(i))
        actions.append(("B", i))
        batch(send_grad(i))
    return actions


def forward_only_with_transfers(stage: int, stages: int) -> list:
    """Evaluation of one batch: receive the residual stream, run the stage, pass it on."""
    actions: list = [] if stage == 0 else [(Transfer("recv", "act", 0),)]
    actions.append(("F", 0))
    return actions if stage == stages - 1 else actions + [(Transfer("send", "act", 0),)]


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
    orders = [[(kind == "F", j) for kind, j in one_f_one_b(s, stages, micro_batches)] for s in range(stages)]
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


REPLAY_OPS = 20_000  # schedules longer than this are estimated, not replayed (planning speed)


def step_seconds(forward_s: list[float], backward_s: list[float], micro_batches: int) -> float:
    """The 1F1B step: replayed by `simulate` up to REPLAY_OPS operations, else estimated as
    every stage's slot once plus m - 1 slots of the slowest stage (the critical path when the
    slowest stage never waits; within 3% of the replay for stages like the engine's: even
    middles, a heavier first and last)."""
    return _step_seconds(tuple(forward_s), tuple(backward_s), micro_batches)


@lru_cache(maxsize=4096)  # a plan prices many rank orders whose stages take the same times
def _step_seconds(forward_s: tuple[float, ...], backward_s: tuple[float, ...], micro_batches: int) -> float:
    if 2 * len(forward_s) * micro_batches <= REPLAY_OPS:
        return simulate(forward_s, backward_s, micro_batches).step_s
    slots = [f + b for f, b in zip(forward_s, backward_s)]
    return sum(slots) + (micro_batches - 1) * max(slots)
