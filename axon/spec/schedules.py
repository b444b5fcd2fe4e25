"""The 1F1B pipeline schedule, plain and interleaved: the order each stage runs and its
transfers between stages.

The engine runs exactly `one_f_one_b_with_transfers` (axon.parallel.pipeline imports it): the
compute order of `pipeline_order` with the sends and receives between stages placed and
batched. The performance model replays the same orders (perfmodel.pipeline_replay), and
`axon.spec.deadlock_check` checks them under NCCL's rules, so all three agree by construction.

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


def bubble_fraction(stages: int, micro_batches: int, chunks: int = 1) -> float:
    """The textbook bubble of even stages, (p - 1) / (v m) of the busy time: each stage waits
    p - 1 slots of one chunk's work while the pipeline fills and drains, and is busy v m."""
    return (stages - 1) / (chunks * micro_batches)


def idle_fraction(stages: int, micro_batches: int, chunks: int = 1) -> float:
    """The same bubble as a share of the whole step, (p - 1) / (v m + p - 1)."""
    return (stages - 1) / (chunks * micro_batches + stages - 1)


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
    and tuples of `Transfer`s, each tuple issued as one batch where it stands (the engine waits
    for a received tensor just before the entry that reads it, axon/parallel/pipeline.py).

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
    neighbours are one rank (p = 2). `axon.spec.deadlock_check` checks every such order.
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
