"""Rebuild full (global) parameter tensors from their shards, on every rank.

For checks, tests and export; never on the training path (it materializes whole weights).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from axon.parallel.comm import all_gather_flat
from axon.parallel.sharding import named_shardings


def _concat_over(block: torch.Tensor, group, dim: int) -> torch.Tensor:
    if group is None:
        return block
    parts = [torch.empty_like(block) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, block.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def full_tensor(shard: torch.Tensor, sharding, grid) -> torch.Tensor:
    block_shape = sharding.block_shape(grid)
    numel = torch.Size(block_shape).numel()
    if sharding.depth_sharded:
        shard = all_gather_flat(shard.detach(), grid.axis("depth"))
    block = shard.detach().reshape(-1)[:numel].view(block_shape)
    for dim, axis in enumerate(sharding.dim_axes):
        if axis is not None:
            block = _concat_over(block, grid.group(axis), dim)
    # A copy: where no axis needed gathering, `block` still views the live parameter.
    return block.clone()


def full_parameters(model, grid) -> dict[str, torch.Tensor]:
    """name -> full tensor of every parameter of the whole model (collective: every rank calls it).

    Each pipeline stage holds only its own layers; the stages swap their (full) tensors, on the host.
    """
    stage = {name: full_tensor(param, sharding, grid) for name, param, sharding in named_shardings(model)}
    pipe = grid.group("pipe")
    if pipe is None:
        return stage
    stages = [None] * dist.get_world_size(pipe)
    dist.all_gather_object(stages, {name: t.cpu() for name, t in stage.items()}, group=pipe)
    device = next(iter(stage.values())).device
    return {name: t.to(device) for part in stages for name, t in part.items()}
