"""Point-to-point transfers between pipeline stages, issued in batches.

NCCL runs the operations between two ranks in order on one stream and completes a send
only together with its receive. A stage therefore issues the send and the receive it must
run beside as one `batch_isend_irecv` (one NCCL group) and waits for the whole batch before
it computes on; `axon.spec.deadlock_check` replays the recorded order under these rules.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from axon.parallel.trace import CommEvent


def join_group(axis, device) -> None:
    """A first collective that every rank of the axis's group joins: NCCL leaves a batched
    point-to-point call that only some members make undefined if it is the group's first."""
    if axis.group is not None:
        dist.all_reduce(torch.zeros(1, device=device), group=axis.group)


def exchange(transfers: list[tuple[str, torch.Tensor, int, str]], axis) -> None:
    """Run (op, tensor, peer, label) transfers as one batch and wait for all of them; op is
    "send" or "recv", peer a global rank in the axis's group, label what travels ("act 3").

    Every operation is recorded in the trace with its peer, the batch it belongs to (the seq
    of the batch's first operation) and its seq (this rank's issue index in the step). The
    batch is one entry of the flight recorder (axon.parallel.flight), waiting from its issue
    until the waits return: its transfers' kind, peer, shape, dtype, bytes and label, host
    metadata only. AXON_FAULT=...:at=p2p acts here (None from the recorder: the batch is left out)."""
    trace = axis.trace
    ops = [dist.P2POp(dist.isend if op == "send" else dist.irecv, tensor, peer, group=axis.group)
           for op, tensor, peer, _ in transfers]
    described = tuple((op, peer, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                       tensor.numel() * tensor.element_size(), label) for op, tensor, peer, label in transfers)
    entry = trace.flight.issue("p2p", axis.name, axis.ranks, sum(d[4] for d in described), blocking=True,
                               transfers=described)
    if entry is None:
        return
    issued = trace.stamp()
    works = dist.batch_isend_irecv(ops)
    wait_start = trace.stamp()
    for work in works:
        work.wait()  # on CUDA: the compute stream waits for the batch; the tensors live until then
    completed = trace.stamp()
    trace.flight.done(entry, None if isinstance(completed, float) else completed)
    batch = trace.p2p_issued
    for op, tensor, peer, label in transfers:
        args = {"peer": peer, "batch": batch, "seq": trace.p2p_issued, "label": label}
        trace.p2p_issued += 1
        trace.add(CommEvent(op, axis.name, tensor.numel() * tensor.element_size(), issued, wait_start, completed, args))
