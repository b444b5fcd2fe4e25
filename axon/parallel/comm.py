"""Collectives and the autograd functions built from them.

Step collectives take an `Axis` (axon.parallel.trace): its group, or None when the axis
has size 1 and the collective is skipped (a 1-process run communicates nothing), and the
trace each collective is recorded in. World-wide helpers at the bottom serve start-up
and checkpoints.
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


def all_reduce(tensor: torch.Tensor, axis, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce over `axis`; returns the tensor."""
    if axis.group is not None:
        with axis.record("all_reduce", _nbytes(tensor)):
            dist.all_reduce(tensor, op=op, group=axis.group)
    return tensor


def all_reduce_start(tensor: torch.Tensor, axis):
    """Start an in-place all-reduce; returns its handle (None when the axis has size 1)."""
    if axis.group is None:
        return None
    work = dist.all_reduce(tensor, group=axis.group, async_op=True)
    return axis.started("all_reduce", _nbytes(tensor), work, keep_alive=(tensor,))


def all_gather_flat(shard: torch.Tensor, axis) -> torch.Tensor:
    """Concatenate every rank's 1-D shard, in group-rank order."""
    if axis.group is None:
        return shard
    full = shard.new_empty(shard.numel() * axis.size)
    with axis.record("all_gather", _nbytes(full)):
        _all_gather_single(full, shard.contiguous(), group=axis.group)
    return full


def all_gather_start(shard: torch.Tensor, axis):
    """Start an all-gather of a 1-D shard; returns (the full buffer, handle). Axis size > 1."""
    full, shard = shard.new_empty(shard.numel() * axis.size), shard.contiguous()
    work = _all_gather_single(full, shard, group=axis.group, async_op=True)
    return full, axis.started("all_gather", _nbytes(full), work, keep_alive=(full, shard))


def reduce_scatter_flat(full: torch.Tensor, axis) -> torch.Tensor:
    """Sum a 1-D tensor over the axis and keep this rank's equal-sized slice."""
    if axis.group is None:
        return full
    shard = full.new_empty(full.numel() // axis.size)
    with axis.record("reduce_scatter", _nbytes(full)):
        _reduce_scatter_single(shard, full.contiguous(), group=axis.group)
    return shard


def reduce_scatter_start(full: torch.Tensor, axis):
    """Start a reduce-scatter of a 1-D tensor; returns (this rank's shard buffer, handle)."""
    shard, full = full.new_empty(full.numel() // axis.size), full.contiguous()
    work = _reduce_scatter_single(shard, full, group=axis.group, async_op=True)
    return shard, axis.started("reduce_scatter", _nbytes(full), work, keep_alive=(full, shard))


def broadcast(tensor: torch.Tensor, axis, src: int) -> torch.Tensor:
    """Fill `tensor` on every rank of the axis's group with global rank `src`'s copy."""
    with axis.record("broadcast", _nbytes(tensor)):
        dist.broadcast(tensor, src=src, group=axis.group)
    return tensor


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


def scatter_block_grad(dblock: torch.Tensor, shard_numel: int, axis) -> torch.Tensor:
    """Reduce-scatter a block's gradient over depth into this rank's (padded) shard."""
    return reduce_scatter_flat(padded_flat(dblock, shard_numel, axis), axis)


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


def gather_to_rank0(tensor: torch.Tensor) -> list[torch.Tensor] | None:
    """Every rank's same-shaped `tensor`, in rank order, on rank 0 only (None elsewhere): rank 0
    receives world x its size, every other rank sends just its own."""
    if not _many_ranks():
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather(tensor, parts, dst=0)
    return parts


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
