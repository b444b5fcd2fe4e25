"""Point-to-point transfers between pipeline stages, issued in batches and waited for late.

NCCL runs the operations between two ranks in order on one stream and completes a send
only together with its receive. A stage therefore issues the send and the receive it must
run beside as one `batch_isend_irecv` (one NCCL group); `axon.spec.deadlock_check` replays
the recorded order under these rules.

A batch is waited for late, so that transfers overlap compute: a received tensor just before
the op that reads it, a sent one when a later receive is waited for or at the end of the
step (`InFlight`). Until its wait the batch holds its tensors: on CUDA they are in use on
NCCL's stream, and work.wait() is what makes the compute stream wait for it. Waits go in
issue order (waiting for a transfer first finishes every earlier batch). On a GPU that costs
nothing: batched point-to-point runs on the pipe group's one NCCL stream, so the batches
finish in issue order anyway. It keeps the trace's events and the flight ring in issue order.

Why late waits cannot deadlock where waiting for each batch at once does not: the batches
still run one after another on that stream in issue order, which is the order the checker
replays; the compute stream only ever waits for batches issued before the wait, so it adds
no cycle.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist

from axon.parallel.trace import CommEvent


def join_group(axis, device) -> None:
    """A first collective that every rank of the axis's group joins: NCCL leaves a batched
    point-to-point call that only some members make undefined if it is the group's first."""
    if axis.group is not None:
        dist.all_reduce(torch.zeros(1, device=device), group=axis.group)


class P2PBatch:
    """One issued batch: its works, the tensors they use (kept until waited for), and each
    transfer's wait stamps. NCCL returns one work for the whole batch (waiting for any transfer
    waits for all of them), gloo one per transfer."""

    def __init__(self, transfers, sizes, works, entry, axis, issued, first_seq: int):
        self.transfers, self.sizes, self.works = transfers, sizes, works
        self.entry, self.axis, self.issued, self.first_seq = entry, axis, issued, first_seq
        self.stamps: list[tuple | None] = [None] * len(transfers)  # (wait_start, completed) once waited
        axis.trace.unwaited += 1  # the step's end checks this is back to 0

    @property
    def done(self) -> bool:
        return all(s is not None for s in self.stamps)

    def wait(self, index: int | None = None) -> None:
        """Wait for transfer `index` (None: every one); one already waited for returns at once.
        Only through `InFlight`, which keeps the waits in issue order."""
        for i in range(len(self.stamps)) if index is None else (index,):
            if self.stamps[i] is None:
                self._wait(i)

    def _wait(self, index: int) -> None:
        trace = self.axis.trace
        own = len(self.works) == len(self.transfers)  # a work per transfer
        covered = [index] if own else [i for i, s in enumerate(self.stamps) if s is None]
        trace.flight.waiting(self.entry)
        wait_start = trace.stamp()
        for work in ([self.works[index]] if own else self.works):
            work.wait()  # on CUDA: the compute stream waits for the batch
        completed = trace.stamp()
        for i in covered:
            self.stamps[i] = (wait_start, completed)
        if not self.done:
            trace.flight.waited(self.entry)
            return
        trace.flight.done(self.entry, None if isinstance(completed, float) else completed)
        trace.unwaited -= 1
        for i, ((op, _, peer, label), nbytes, (start, end)) in enumerate(zip(self.transfers, self.sizes, self.stamps)):
            args = {"peer": peer, "batch": self.first_seq, "seq": self.first_seq + i, "label": label}
            trace.add(CommEvent(op, self.axis.name, nbytes, self.issued, start, end, args))
        self.transfers = self.works = ()  # the tensors may go: the compute stream has waited for them


def exchange(transfers: list[tuple[str, torch.Tensor, int, str]], axis) -> P2PBatch | None:
    """Issue (op, tensor, peer, label) transfers as one batch and return it, to be waited for
    (`InFlight`); op is "send" or "recv", peer a global rank in the axis's group, label what
    travels ("act 3").

    Every operation is recorded in the trace, once its batch is waited for, with its peer, the
    batch it belongs to (the seq of the batch's first operation) and its seq (this rank's issue
    index in the step). The batch is one asynchronous entry of the flight recorder
    (axon.parallel.flight), done when its last wait returns: its transfers' kind, peer, shape,
    dtype, bytes and label, host metadata only. AXON_FAULT=...:at=p2p acts here (None from the
    recorder: the batch is left out, and None is returned)."""
    trace = axis.trace
    ops = [dist.P2POp(dist.isend if op == "send" else dist.irecv, tensor, peer, group=axis.group)
           for op, tensor, peer, _ in transfers]
    described = tuple((op, peer, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                       tensor.numel() * tensor.element_size(), label) for op, tensor, peer, label in transfers)
    entry = trace.flight.issue("p2p", axis.name, axis.ranks, sum(d[4] for d in described), blocking=False,
                               transfers=described)
    if entry is None:
        return None
    issued = trace.stamp()
    works = dist.batch_isend_irecv(ops)
    first_seq, trace.p2p_issued = trace.p2p_issued, trace.p2p_issued + len(transfers)
    return P2PBatch(tuple(transfers), [d[4] for d in described], works, entry, axis, issued, first_seq)


class InFlight:
    """This rank's batches not yet waited for to the end, oldest first."""

    def __init__(self):
        self.batches: deque[P2PBatch] = deque()

    def __len__(self) -> int:
        return len(self.batches)

    def issue(self, transfers, axis) -> P2PBatch | None:
        batch = exchange(transfers, axis)
        if batch is not None:
            self.batches.append(batch)
        return batch

    def wait(self, batch: P2PBatch, index: int) -> None:
        """Wait for transfer `index` of `batch`, after every batch issued before it."""
        if batch.done:
            return
        while self.batches[0] is not batch:
            self.batches.popleft().wait()
        batch.wait(index)
        if batch.done:
            self.batches.popleft()

    def finish(self) -> None:
        """Wait for everything still in flight (before the step ends: nothing crosses it)."""
        while self.batches:
            self.batches.popleft().wait()
