"""Gradient synchronization and clipping: one written rule per parameter kind.

Tokens are split over data and depth, so every gradient must end up summed over
those two axes and nothing else:

* depth-sharded weights (linear layers, embedding): the backward pass already
  reduce-scattered each block's gradient over depth; all-reduce the shard over data.
* replicated weights (RMSNorm gains, split over col only): all-reduce over depth, then
  over data. Row ranks see the same tokens and the same hidden slice, so their
  gradients are already identical: no reduction over row.
"""

from __future__ import annotations

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from axon.parallel.comm import all_reduce
from axon.parallel.sharding import named_shardings


def _all_reduce_coalesced(grads: list[torch.Tensor], axes) -> None:
    """Sum a list of gradients over each axis in turn, as one flat buffer."""
    axes = [a for a in axes if a.group is not None]
    if not grads or not axes:
        return
    flat = _flatten_dense_tensors(grads)
    for axis in axes:
        all_reduce(flat, axis)
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def sync_gradients(model, grid) -> None:
    sharded, replicated = [], []
    for _, param, sharding in named_shardings(model):
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        (sharded if sharding.depth_sharded else replicated).append(param.grad)
    _all_reduce_coalesced(sharded, [grid.axis("data")])
    _all_reduce_coalesced(replicated, [grid.axis("depth"), grid.axis("data")])


def clip_grad_norm(model, grid, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most max_norm; return the norm before.

    Each distinct shard's square-norm is counted exactly once: depth-sharded blocks are
    distinct on every (depth, row, col) rank; replicated gains are distinct only over
    col, so only the depth 0, row 0 ranks contribute them. All ranks of a data group hold
    the same synced gradients, so the sum runs over depth, row and col only.
    """
    counts_replicated = grid.coord("depth") == 0 and grid.coord("row") == 0
    device = next(model.parameters()).device
    square = torch.zeros((), dtype=torch.float64, device=device)
    for _, param, sharding in named_shardings(model):
        if sharding.depth_sharded or counts_replicated:
            square += torch.linalg.vector_norm(param.grad, dtype=torch.float64).square()  # fp64 sum, no copy
    for axis in ("depth", "row", "col"):
        all_reduce(square, grid.axis(axis))
    norm = square.sqrt().item()
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for param in model.parameters():
            param.grad.mul_(scale)
    return norm
