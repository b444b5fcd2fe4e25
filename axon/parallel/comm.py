"""Raw collectives and the autograd functions built from them.

Each helper takes the group of one grid axis; `None` means the axis has size 1 and
the collective is skipped, so a 1-process run executes no communication at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F



def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_reduce(tensor: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; returns the tensor."""
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def world_barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_start(tensor: torch.Tensor, group):
    """Start an in-place all-reduce; returns its handle (None when the axis has size 1)."""
    return None if group is None else dist.all_reduce(tensor, group=group, async_op=True)


def reduce_scatter_start(full: torch.Tensor, group):
    """Start a reduce-scatter of a 1-D tensor; returns (this rank's shard buffer, handle)."""
    shard = full.new_empty(full.numel() // dist.get_world_size(group))
    return shard, dist.reduce_scatter_single(shard, full.contiguous(), group=group, async_op=True)


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank (checkpoint bookkeeping)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def any_rank(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any rank (to stop all ranks at the same step)."""
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def world_mean(value: float, device) -> float:
    """Mean of a per-rank number over the whole world (start-up measurements)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.item()


def all_gather_flat(shard: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's 1-D shard, in group-rank order."""
    if group is None:
        return shard
    full = shard.new_empty(shard.numel() * dist.get_world_size(group))
    dist.all_gather_single(full, shard.contiguous(), group=group)
    return full


def reduce_scatter_flat(full: torch.Tensor, group) -> torch.Tensor:
    """Sum a 1-D tensor over the group and keep this rank's equal-sized slice."""
    if group is None:
        return full
    shard = full.new_empty(full.numel() // dist.get_world_size(group))
    dist.reduce_scatter_single(shard, full.contiguous(), group=group)
    return shard


class _SumOverGroup(torch.autograd.Function):
    """y = sum over the group of x; each rank's y feeds a different computation, so the
    gradient of every x is the sum of all ranks' dy (an all-reduce again)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, dy):
        return all_reduce(dy.clone(), ctx.group), None


class _SumReplicatedOutput(torch.autograd.Function):
    """y = sum over the group of partial x, consumed identically on every rank (e.g.
    partial embedding lookups): the incoming dy is already the full gradient of each x."""

    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, dy):
        return dy, None


def sum_over_group(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-reduce whose outputs feed rank-specific computations."""
    return x if group is None else _SumOverGroup.apply(x, group)


def sum_partials(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-reduce of partial results that every rank then uses identically."""
    return x if group is None else _SumReplicatedOutput.apply(x, group)


def gather_block(shard: torch.Tensor, block_shape, group) -> torch.Tensor:
    """A 2-D weight block rebuilt from its depth shards (dropping the padding at the end)."""
    rows, cols = block_shape
    return all_gather_flat(shard, group)[: rows * cols].view(rows, cols)


class _GatherDepthBlock(torch.autograd.Function):
    """Forward: a weight block rebuilt from its depth shards; backward: the block's
    gradient summed over depth and scattered back to the shards (FSDP-style)."""

    @staticmethod
    def forward(ctx, shard, block_shape, group):
        ctx.group, ctx.shard_numel = group, shard.numel()
        return gather_block(shard, block_shape, group)

    @staticmethod
    def backward(ctx, dblock):
        return scatter_block_grad(dblock, ctx.shard_numel, ctx.group), None, None


def gather_depth_block(shard: torch.Tensor, block_shape, group) -> torch.Tensor:
    """Differentiable depth all-gather of a 2-D block (shards may end in padding)."""
    return _GatherDepthBlock.apply(shard, tuple(block_shape), group)


def padded_flat(dblock: torch.Tensor, shard_numel: int, group) -> torch.Tensor:
    """A block's gradient flattened and padded to depth x shard size (the padding gets zero)."""
    flat = dblock.reshape(-1)
    pad = shard_numel * group_size(group) - flat.numel()
    return F.pad(flat, (0, pad)) if pad else flat


def scatter_block_grad(dblock: torch.Tensor, shard_numel: int, group) -> torch.Tensor:
    """Reduce-scatter a block's gradient over depth into this rank's (padded) shard."""
    return reduce_scatter_flat(padded_flat(dblock, shard_numel, group), group)
