"""Collectives and the autograd functions built from them.

Step collectives take an `Axis` (axon.parallel.trace): its group, or None when the axis
has size 1 and the collective is skipped (a 1-process run communicates nothing), and the
trace each collective is recorded in. World-wide helpers at the bottom serve start-up
and checkpoints.

Gradient reductions take a `wire_dtype` (train.grad_reduce_dtype): bf16 sends a bf16 copy,
half the bytes, and the sum comes back into the fp32 gradient; None sends the tensor itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


# Flat all-gather and reduce-scatter into one tensor: torch 2.13 names them *_single; from
# 2.0 they are all_gather_into_tensor and reduce_scatter_tensor (same arguments and semantics).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _on_wire(tensor: torch.Tensor, axis, wire_dtype) -> torch.Tensor:
    """What a reduction sends: a `wire_dtype` copy when the axis communicates and the dtypes
    differ, else the tensor itself (a skipped collective never rounds)."""
    if wire_dtype is None or wire_dtype == tensor.dtype or axis.group is None:
        return tensor
    return tensor.to(wire_dtype)


class WidenOnWait:
    """An asynchronous reduction of a narrow wire copy: waiting also copies the result into the
    caller's full-precision tensor. The traced handle keeps the copy alive until its wait."""

    def __init__(self, handle, wire: torch.Tensor, target: torch.Tensor):
        self.handle, self.wire, self.target = handle, wire, target

    def wait(self) -> None:
        self.handle.wait()
        self.target.copy_(self.wire)  # on CUDA: after the compute stream has waited for the collective
        self.wire = None


def all_reduce(tensor: torch.Tensor, axis, op=dist.ReduceOp.SUM, wire_dtype=None) -> torch.Tensor:
    """In-place all-reduce over `axis` (sent as `wire_dtype`, if given); returns the tensor."""
    if axis.group is not None:
        wire = _on_wire(tensor, axis, wire_dtype)
        with axis.record("all_reduce", _nbytes(wire)) as run:
            if run:
                dist.all_reduce(wire, op=op, group=axis.group)
        if wire is not tensor:
            tensor.copy_(wire)
    return tensor


def all_reduce_start(tensor: torch.Tensor, axis, wire_dtype=None):
    """Start an in-place all-reduce (sent as `wire_dtype`, if given); returns its handle (None
    when the axis has size 1). The tensor holds the sum once the handle is waited for."""
    if axis.group is None:
        return None
    wire = _on_wire(tensor, axis, wire_dtype)
    entry = axis.issuing("all_reduce", _nbytes(wire))
    work = dist.all_reduce(wire, group=axis.group, async_op=True)
    handle = axis.started("all_reduce", _nbytes(wire), work, keep_alive=(wire,), entry=entry)
    return handle if wire is tensor else WidenOnWait(handle, wire, tensor)


def all_gather_flat(shard: torch.Tensor, axis) -> torch.Tensor:
    """Concatenate every rank's 1-D shard, in group-rank order."""
    if axis.group is None:
        return shard
    full = shard.new_empty(shard.numel() * axis.size)
    with axis.record("all_gather", _nbytes(full)) as run:
        if run:
            _all_gather_single(full, shard.contiguous(), group=axis.group)
    return full


def all_gather_start(shard: torch.Tensor, axis):
    """Start an all-gather of a 1-D shard; returns (the full buffer, handle). Axis size > 1."""
    full, shard = shard.new_empty(shard.numel() * axis.size), shard.contiguous()
    entry = axis.issuing("all_gather", _nbytes(full))
    work = _all_gather_single(full, shard, group=axis.group, async_op=True)
    return full, axis.started("all_gather", _nbytes(full), work, keep_alive=(full, shard), entry=entry)


def reduce_scatter_flat(full: torch.Tensor, axis) -> torch.Tensor:
    """Sum a 1-D tensor over the axis and keep this rank's equal-sized slice."""
    if axis.group is None:
        return full
    shard = full.new_empty(full.numel() // axis.size)
    with axis.record("reduce_scatter", _nbytes(full)) as run:
        if run:
            _reduce_scatter_single(shard, full.contiguous(), group=axis.group)
    return shard


def reduce_scatter_start(full: torch.Tensor, axis):
    """Start a reduce-scatter of a 1-D tensor; returns (this rank's shard buffer, handle)."""
    shard, full = full.new_empty(full.numel() // axis.size), full.contiguous()
    entry = axis.issuing("reduce_scatter", _nbytes(full))
    work = _reduce_scatter_single(shard, full, group=axis.group, async_op=True)
    return shard, axis.started("reduce_scatter", _nbytes(full), work, keep_alive=(full, shard), entry=entry)


def broadcast(tensor: torch.Tensor, axis, src: int) -> torch.Tensor:
    """Fill `tensor` on every rank of the axis's group with global rank `src`'s copy."""
    with axis.record("broadcast", _nbytes(tensor)) as run:
        if run:
            dist.broadcast(tensor, src=src, group=axis.group)
    return tensor


def barrier(axis) -> None:
    """Every rank of the axis's group meets (skipped when the axis has size 1)."""
    if axis.group is not None:
        with axis.record("barrier", 0) as run:
            if run:
                dist.barrier(group=axis.group)


class _SumOverGroup(torch.autograd.Function):
    """y = sum over the axis of x; each rank's y feeds a different computation, so the
    gradient of every x is the sum of all ranks' dy (an all-reduce again)."""

    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        return all_reduce(x.clone(), axis)

    @staticmethod
    def backward(ctx, dy):
        return all_reduce(dy.clone(), ctx.axis), None


class _SumReplicatedOutput(torch.autograd.Function):
    """y = sum over the axis of partial x, consumed identically on every rank (e.g.
    partial embedding lookups): the incoming dy is already the full gradient of each x."""

    @staticmethod
    def forward(ctx, x, axis):
        return all_reduce(x.clone(), axis)

    @staticmethod
    def backward(ctx, dy):
        return dy, None


def sum_over_group(x: torch.Tensor, axis) -> torch.Tensor:
    """Differentiable all-reduce whose outputs feed rank-specific computations."""
    return x if axis.group is None else _SumOverGroup.apply(x, axis)


def sum_partials(x: torch.Tensor, axis) -> torch.Tensor:
    """Differentiable all-reduce of partial results that every rank then uses identically."""
    return x if axis.group is None else _SumReplicatedOutput.apply(x, axis)


def gather_block(shard: torch.Tensor, block_shape, axis) -> torch.Tensor:
    """A 2-D weight block rebuilt from its depth shards (dropping the padding at the end)."""
    rows, cols = block_shape
    return all_gather_flat(shard, axis)[: rows * cols].view(rows, cols)


def padded_flat(dblock: torch.Tensor, shard_numel: int, axis) -> torch.Tensor:
    """A block's gradient flattened and padded to depth x shard size (the padding gets zero)."""
    flat = dblock.reshape(-1)
    pad = shard_numel * axis.size - flat.numel()
    return F.pad(flat, (0, pad)) if pad else flat


def scatter_block_grad(dblock: torch.Tensor, shard_numel: int, axis, wire_dtype=None) -> torch.Tensor:
    """Reduce-scatter a block's gradient over depth into this rank's (padded) shard, sent as
    `wire_dtype` if given (cast before padding: one narrow copy); the shard has dblock's dtype."""
    wire = padded_flat(_on_wire(dblock, axis, wire_dtype), shard_numel, axis)
    return reduce_scatter_flat(wire, axis).to(dblock.dtype)


def scatter_block_grad_start(dblock: torch.Tensor, shard_numel: int, axis, wire_dtype=None):
    """scatter_block_grad, asynchronous (axis size > 1): (this rank's shard in dblock's dtype,
    filled once the handle is waited for; the handle)."""
    wire = padded_flat(_on_wire(dblock, axis, wire_dtype), shard_numel, axis)
    shard, handle = reduce_scatter_start(wire, axis)
    if shard.dtype == dblock.dtype:
        return shard, handle
    widened = torch.empty_like(shard, dtype=dblock.dtype)
    return widened, WidenOnWait(handle, shard, widened)


# World-wide helpers: start-up measurements and checkpoint bookkeeping, not the step.

def _many_ranks() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def world_barrier() -> None:
    if _many_ranks():
        dist.barrier()


def world_min(value: int, device) -> int:
    """The smallest of every rank's integer, on every rank."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    if _many_ranks():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def broadcast_object(obj, src: int = 0):
    """Global rank `src`'s picklable `obj`, on every rank."""
    if not _many_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def first_error(message: str | None, device) -> str | None:
    """The lowest failing rank's message on every rank, None if no rank failed: one number
    all-reduced and one message broadcast, so each rank sends O(1) bytes at any world size."""
    if not _many_ranks():
        return message
    world = dist.get_world_size()
    src = world_min(dist.get_rank() if message else world, device)
    return None if src == world else broadcast_object(message, src)


def gather_objects_to_rank0(obj, group) -> list | None:
    """Every member's picklable `obj`, in group order, on global rank 0 (a member of `group`),
    None on the other members; `group` None means rank 0 alone."""
    if group is None:
        return [obj]
    objs = [None] * dist.get_world_size(group) if dist.get_rank() == 0 else None
    dist.gather_object(obj, objs, dst=0, group=group)
    return objs


def world_mean(value: float, device) -> float:
    """Mean of a per-rank number over the whole world (start-up measurements)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.item()


def world_max_with_rank(values: list[float], device) -> list[tuple[float, int]]:
    """For each per-rank number, the largest over the world and the rank that holds it (ties:
    the highest rank): one MAX all-reduce of len(values) int64 keys, microseconds << 20 | rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    keys = torch.tensor([(max(0, round(v * 1e6)) << 20) | rank for v in values], dtype=torch.int64, device=device)
    if _many_ranks():
        dist.all_reduce(keys, op=dist.ReduceOp.MAX)
    return [((k >> 20) / 1e6, k & ((1 << 20) - 1)) for k in keys.tolist()]
