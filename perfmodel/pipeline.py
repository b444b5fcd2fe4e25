"""The 1F1B pipeline schedule, plain and interleaved: the order each stage runs, its
transfers, and its timeline.

The engine runs exactly `one_f_one_b_with_transfers` (axon.parallel.pipeline imports it):
the compute order of `pipeline_order` with the sends and receives between stages placed and
batched. `simulate` (plain) and `simulate_interleaved` replay those orders with per-stage
forward and backward times, so the bubble the model predicts comes from the same schedule,
including uneven stages (the first holds the embedding, the last the head and the loss) and
the point-to-point latency between them.

Interleaved 1F1B (Megatron-LM's, `layout.virtual_stages` v > 1): the layers are split into
p x v chunks; stage s holds chunks s, s + p, ..., s + (v - 1) p (virtual stages c p + s), so
activations go round the ring of stages v times. Micro-batches run in groups of p: a stage
runs chunk 0 forward for micro-batches 0..p-1, then chunk 1 for the same p, ..., then the
next group; backwards run the chunks in reverse. Stage s runs 2 (p - s - 1) + (v - 1) p
forwards ahead (warm-up), then alternates, then drains. The bubble falls from (p - 1) / m
to (p - 1) / (v m) of the busy time, for v times the point-to-point transfers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


def warmup_forwards(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> int:
    """Forwards stage `stage` runs before its first backward: p - s - 1 in plain 1F1B (the
    micro-batches still to reach the last stage), 2 (p - s - 1) + (v - 1) p interleaved
    (Megatron-LM's: its first backward, of its last chunk, needs micro-batch 0 through every
    chunk of the ring and back through the stages after it), at most every forward."""
    if chunks == 1:
        return min(stages - stage - 1, micro_batches)
    return min(2 * (stages - stage - 1) + (chunks - 1) * stages, chunks * micro_batches)


def pipeline_order(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> list[tuple[str, int, int]]:
    """The order of ("F", j, c) forwards and ("B", j, c) backwards of micro-batch j through
    chunk c (of this stage's `chunks`) that stage `stage` of `stages` runs.

    The k-th forward is of chunk (k mod pv) // p and micro-batch (k // pv) p + k mod p (groups
    of p micro-batches); the k-th backward likewise with the chunks reversed. Interleaving
    needs micro_batches to be a multiple of stages."""
    p, v = stages, chunks
    if v > 1 and micro_batches % p:
        raise ValueError(f"interleaved 1F1B needs the micro-batches ({micro_batches}) to be a multiple of "
                         f"the stages ({p})")

    def unit(k: int, forward: bool) -> tuple[int, int]:
        group, within = divmod(k, p * v)
        chunk = within // p
        return group * p + within % p, (chunk if forward else v - 1 - chunk)

    total = micro_batches * v
    warmup = warmup_forwards(stage, stages, micro_batches, chunks)
    order = [("F", *unit(k, True)) for k in range(warmup)]
    for k in range(total - warmup):
        order += [("F", *unit(warmup + k, True)), ("B", *unit(k, False))]
    order += [("B", *unit(k, False)) for k in range(total - warmup, total)]
    return order


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """Plain 1F1B's order of ("F", j) forwards and ("B", j) backwards for stage `stage`.

    Stage s runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
    backward, then drains the remaining backwards: at most p - s micro-batches in flight.
    """
    return [(kind, j) for kind, j, _ in pipeline_order(stage, stages, micro_batches)]


@lru_cache(maxsize=1024)  # the planner asks for the same few stages many times
def in_flight_peak(stage: int, stages: int, micro_batches: int, chunks: int = 1,
                   weights: tuple[float, ...] | None = None) -> float:
    """The most activations stage `stage` keeps for backward at once: the peak over its order
    of the (chunk-weighted) count of forwards whose backward has not run. Plain 1F1B:
    min(p - s, m) micro-batches. weights[c] is chunk c's share of the stage (default 1 / v each)."""
    weights = weights or (1.0 / chunks,) * chunks
    alive = peak = 0.0
    for kind, _, chunk in pipeline_order(stage, stages, micro_batches, chunks):
        alive += weights[chunk] if kind == "F" else -weights[chunk]
        peak = max(peak, alive)
    return peak


@dataclass(frozen=True)
class Transfer:
    """One point-to-point operation of a stage: send or receive the activations ("act") of
    micro-batch `micro` or their gradient ("grad"), for this stage's chunk `chunk` (the chunk
    whose input or output it is)."""

    op: str  # "send" | "recv"
    tensor: str  # "act" | "grad"
    micro: int
    chunk: int = 0

    @property
    def toward(self) -> int:
        """+1: the next stage; -1: the previous one (activations flow forward, gradients back;
        interleaved, the last stage's next is the first: the ring)."""
        return 1 if (self.op == "send") == (self.tensor == "act") else -1

    def label(self, stage: int, stages: int) -> str:
        """What travels, the same on both sides: "act 3 v1>v2" is micro-batch 3's activations
        from virtual stage 1 (chunk c of stage s is virtual stage c p + s) to virtual stage 2."""
        here = self.chunk * stages + stage
        there = here + self.toward
        source, target = (here, there) if self.op == "send" else (there, here)
        return f"{self.tensor} {self.micro} v{source}>v{target}"


def _inputs_and_outputs(stage: int, stages: int, chunks: int):
    """receive(kind, j, c) and send(kind, j, c): the transfer that brings an op its input and the
    one that takes its output away, or None where it stays on the stage (the first virtual
    stage's input is the token ids, the last's output the loss)."""
    last = stages * chunks - 1

    def receive(kind: str, j: int, c: int) -> Transfer | None:
        q = c * stages + stage
        if kind == "F":
            return None if q == 0 else Transfer("recv", "act", j, c)
        return None if q == last else Transfer("recv", "grad", j, c)

    def send(kind: str, j: int, c: int) -> Transfer | None:
        q = c * stages + stage
        if kind == "F":
            return None if q == last else Transfer("send", "act", j, c)
        return None if q == 0 else Transfer("send", "grad", j, c)

    return receive, send


def one_f_one_b_with_transfers(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> list:
    """`pipeline_order`'s compute order with its transfers: ("F", j, c) and ("B", j, c) entries,
    and tuples of `Transfer`s, each tuple issued as one batch and waited for before going on.

    Plain 1F1B, Megatron-LM's pairing: in the steady state a stage's send forward runs beside
    its receive backward (both with the next stage) and its send backward beside its receive
    forward (both with the previous one), so two neighbours never each wait on a send the
    other has queued behind its own. Warm-up and cool-down transfers run alone: there a stage
    only sends toward a neighbour that is already waiting to receive it.

    Interleaved, Megatron-LM's batching too: the order is cut into units (one forward in
    warm-up, a forward and a backward in the steady state, one backward in cool-down), and one
    batch after each unit sends the unit's outputs and receives the next unit's inputs (the
    first unit's inputs come in a batch of their own). Within a batch the sends come in op
    order, then the receives, which is what the peer's matching batch lists when both
    neighbours are one rank (p = 2). `axon.parallel.rendezvous` checks every such order.
    """
    if chunks > 1:
        return _interleaved_with_transfers(stage, stages, micro_batches, chunks)
    first, last = stage == 0, stage == stages - 1
    warmup = warmup_forwards(stage, stages, micro_batches)
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
        actions.append(("F", j, 0))
        batch(send_act(j))
    if steady:
        batch(recv_act(warmup))
    for i in range(steady):
        j = warmup + i
        actions.append(("F", j, 0))
        batch(send_act(j), recv_grad(i))
        actions.append(("B", i, 0))
        batch(send_grad(i), recv_act(j + 1) if i < steady - 1 else None)
    for i in range(steady, micro_batches):
        batch(recv_grad(i))
        actions.append(("B", i, 0))
        batch(send_grad(i))
    return actions


def _interleaved_with_transfers(stage: int, stages: int, micro_batches: int, chunks: int) -> list:
    order = pipeline_order(stage, stages, micro_batches, chunks)
    warmup = warmup_forwards(stage, stages, micro_batches, chunks)
    steady = len(order) // 2 - warmup
    units = [order[k:k + 1] for k in range(warmup)]
    units += [order[k:k + 2] for k in range(warmup, warmup + 2 * steady, 2)]
    units += [order[k:k + 1] for k in range(warmup + 2 * steady, len(order))]
    receive, send = _inputs_and_outputs(stage, stages, chunks)
    actions: list = []

    def batch(transfers) -> None:
        ops = tuple(t for t in transfers if t is not None)
        if ops:
            actions.append(ops)

    batch(receive(*op) for op in units[0])
    for index, unit in enumerate(units):
        actions += unit
        following = units[index + 1] if index + 1 < len(units) else []
        batch([send(*op) for op in unit] + [receive(*op) for op in following])
    return actions


def forward_only_with_transfers(stage: int, stages: int, chunks: int = 1) -> list:
    """Evaluation of one batch: for each of the stage's chunks in turn, receive the residual
    stream, run the chunk, pass it on (round the ring of stages v times when interleaved)."""
    receive, send = _inputs_and_outputs(stage, stages, chunks)
    actions: list = []
    for c in range(chunks):
        incoming, outgoing = receive("F", 0, c), send("F", 0, c)
        actions += ([(incoming,)] if incoming else []) + [("F", 0, c)] + ([(outgoing,)] if outgoing else [])
    return actions


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
    orders = [[(kind == "F", j) for kind, j, _ in pipeline_order(s, stages, micro_batches)] for s in range(stages)]
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
            raise RuntimeError("interleaved schedule deadlocked")  # the rendezvous tests rule this out
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


REPLAY_OPS = 20_000  # schedules longer than this are estimated, not replayed (planning speed)


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
