"""Replay every rank's point-to-point operations under NCCL's rules and find deadlocks.

gloo buffers sends, so a CPU run passes orders that hang on GPUs. This checker (plain
Python, no torch) replays the operations of one step, as the communication trace records
them (`peer`, `batch`, `seq`), under the rules NCCL follows:

* Between two ranks, operations run in issue order on one stream (FIFO per pair).
* The k-th send from a to b and the k-th receive on b from a complete together; a send
  never completes on its own (no eager buffer: activations are far larger than one). They
  must carry the same tensor: a pair whose labels differ is reported (with interleaved
  stages at p = 2, both neighbours are one rank, and a swapped pair would silently deliver
  one micro-batch's activations as another's).
* A batch (one `batch_isend_irecv` call) starts when all its operations can, runs them as
  one group, and completes when all of them have.
* A rank's batches run one after another, in issue order: on a GPU they queue on the pipe
  group's one NCCL stream (batched point-to-point uses the group's communicator). The engine
  waits for a transfer only just before it needs it (axon.parallel.p2p), so it may issue a
  batch before the previous one has finished; the stream still starts it only after. Those
  waits make the compute stream wait only for batches issued before them, so they add no
  cycle to this order. Stream order per pair follows from it.

A rank that cannot finish is reported with the operations it is blocked on. From a shell,
on the traces a run wrote with `train.trace_steps` (no torch needed, e.g. on a login node):

    python -m axon.spec.deadlock_check OUT_DIR/comm_trace_rank*.json
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from axon.spec.schedules import Transfer, forward_only_with_transfers, one_f_one_b_with_transfers


@dataclass(frozen=True)
class P2POp:
    rank: int
    op: str  # "send" | "recv"
    peer: int  # the other side's global rank
    batch: int  # shared by the operations of one batched call
    seq: int  # this rank's issue index
    label: str = ""  # what was sent, for messages ("act 3")

    def __str__(self) -> str:
        what = f" {self.label}" if self.label else ""
        arrow = "to" if self.op == "send" else "from"
        return f"{self.op}{what} {arrow} rank {self.peer} (seq {self.seq})"


@dataclass(frozen=True)
class Verdict:
    completed: bool
    stuck: dict[int, list[P2POp]]  # rank -> the operations of the batch it waits on, still open
    unmatched: list[P2POp]  # operations no peer issues a partner for
    mismatched: list[tuple[P2POp, P2POp]] = field(default_factory=list)  # (send, the receive it pairs with) whose labels differ

    def __str__(self) -> str:
        if self.completed:
            return "every point-to-point operation completes"
        lines = [f"rank {rank} is stuck on " + "; ".join(map(str, ops)) for rank, ops in sorted(self.stuck.items())]
        lines += [f"rank {op.rank}: {op} has no matching operation on rank {op.peer}" for op in self.unmatched]
        lines += [f"rank {send.rank}: {send} pairs with rank {recv.rank}'s {recv}" for send, recv in self.mismatched]
        return ("deadlock: " if self.stuck or self.unmatched else "wrong tensors: ") + "\n".join(lines)


def replay(ops_by_rank: dict[int, list[P2POp]]) -> Verdict:
    """Replay the operations (each rank's in any order; `seq` orders them) to the end or to a deadlock."""
    batches: dict[int, list[list[int]]] = {}
    ops: list[P2POp] = []
    for rank, rank_ops in ops_by_rank.items():
        groups: list[list[int]] = []
        for op in sorted(rank_ops, key=lambda o: o.seq):
            if not groups or ops[groups[-1][0]].batch != op.batch:
                groups.append([])
            groups[-1].append(len(ops))
            ops.append(op)
        batches[rank] = groups

    # The k-th send a -> b pairs with the k-th receive on b from a.
    queues: dict[tuple[int, int, str], list[int]] = defaultdict(list)
    for rank in batches:
        for group in batches[rank]:
            for index in group:
                op = ops[index]
                queues[(op.rank, op.peer, op.op)].append(index)
    partner = [-1] * len(ops)
    for (src, dst, kind), sends in queues.items():
        if kind != "send":
            continue
        for send, recv in zip(sends, queues.get((dst, src, "recv"), [])):
            partner[send], partner[recv] = recv, send

    started, done = [False] * len(ops), [False] * len(ops)
    position = dict.fromkeys(batches, 0)
    pending = list(batches)
    while pending:
        rank = pending.pop()
        groups = batches[rank]
        while position[rank] < len(groups):
            group = groups[position[rank]]
            if not started[group[0]]:
                for index in group:
                    started[index] = True
                for index in group:
                    other = partner[index]
                    if other >= 0 and started[other] and not done[index]:
                        done[index] = done[other] = True
                        pending.append(ops[other].rank)  # its batch may be complete now
            if not all(done[index] for index in group):
                break
            position[rank] += 1

    stuck = {rank: [ops[i] for i in groups[position[rank]] if not done[i]]
             for rank, groups in batches.items() if position[rank] < len(groups)}
    unmatched = [op for index, op in enumerate(ops) if partner[index] < 0]
    mismatched = [(op, ops[partner[index]]) for index, op in enumerate(ops)
                  if op.op == "send" and partner[index] >= 0 and op.label != ops[partner[index]].label]
    return Verdict(not stuck and not unmatched and not mismatched, stuck, unmatched, mismatched)


def ops_from_trace(records: list[dict]) -> list[P2POp]:
    """The point-to-point operations among Chrome trace records (train.trace_steps): events
    named send... or recv... with `peer`, `batch` and `seq` in their args; `pid` is the rank."""
    ops = []
    for record in records:
        name, args = record.get("name", ""), record.get("args", {})
        if name.startswith(("send", "recv")) and "seq" in args:
            ops.append(P2POp(record["pid"], name[:4], args["peer"], args["batch"], args["seq"], args.get("label", "")))
    return ops


def check_trace_files(paths: list[str | Path]) -> Verdict:
    """Replay the point-to-point operations of Chrome trace files (one or more per rank).

    A file may hold several steps: `seq` restarts at 0 in each, and each rank records its
    operations in issue order, so a step ends where `seq` stops growing. Steps are replayed
    one after another (no operation crosses a step boundary)."""
    steps: dict[int, dict[int, list[P2POp]]] = defaultdict(dict)
    for path in paths:
        data = json.loads(Path(path).read_text())
        step, previous = 0, -1
        for op in ops_from_trace(data["traceEvents"] if isinstance(data, dict) else data):
            if op.seq <= previous:
                step += 1
            previous = op.seq
            steps[step].setdefault(op.rank, []).append(op)
    for step in sorted(steps):
        verdict = replay(steps[step])
        if not verdict.completed:
            return verdict
    return Verdict(True, {}, [], [])


def planned_ops(stages: int, micro_batches: int, forward_only: bool = False, chunks: int = 1) -> dict[int, list[P2POp]]:
    """The engine's schedule as operations, without running it: stage s is rank s; `chunks`
    is layout.virtual_stages (its stages form a ring)."""
    ops: dict[int, list[P2POp]] = {}
    for stage in range(stages):
        actions = (forward_only_with_transfers(stage, stages, chunks) if forward_only
                   else one_f_one_b_with_transfers(stage, stages, micro_batches, chunks))
        mine: list[P2POp] = []
        for action in actions:
            if isinstance(action[0], Transfer):
                batch = len(mine)
                for t in action:
                    peer = (stage + t.toward) % stages
                    mine.append(P2POp(stage, t.op, peer, batch, len(mine), t.label(stage, stages)))
        ops[stage] = mine
    return ops


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m axon.spec.deadlock_check",
                                     description="Replay the point-to-point operations of Chrome traces "
                                                 "(train.trace_steps) under NCCL's rules.")
    parser.add_argument("traces", nargs="+", help="OUT_DIR/comm_trace_rank*.json, every rank's")
    verdict = check_trace_files(parser.parse_args(argv).traces)
    print(verdict)
    return 0 if verdict.completed else 1


if __name__ == "__main__":
    raise SystemExit(main())
