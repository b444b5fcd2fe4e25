"""Gradient clipping by the global norm of the sharded gradients.

(Summing gradients over data and depth is axon.parallel.data_parallel's job.)
"""

from __future__ import annotations

import torch

from axon.parallel.comm import all_reduce
from axon.parallel.sharding import named_shardings


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `tensors` together (torch.nn.utils.get_total_norm from torch 2.6)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def clip_grad_norm(model, grid, max_norm: float, stop_votes: float = 0.0) -> tuple[float, float]:
    """Scale gradients so their global L2 norm is at most max_norm; return the norm before,
    and `stop_votes` summed over pipe, depth, row and col.

    The stop votes ride in the same all-reduces as the square-norm, so agreeing on a stop
    signal costs no collective of its own (axon.runtime.trainer sums them over data first).

    Each distinct shard's square-norm is counted exactly once: depth-sharded blocks are
    distinct on every (depth, row, col) rank; replicated gains are distinct only over
    col, so only the depth 0, row 0 ranks contribute them. Pipeline stages hold disjoint
    parameters, so their sums add. All ranks of a data group hold the same synced
    gradients, so the sum runs over pipe, depth, row and col only.
    """
    counts_replicated = grid.coord("depth") == 0 and grid.coord("row") == 0
    counted = [param.grad for _, param, sharding in named_shardings(model)
               if sharding.depth_sharded or counts_replicated]
    device = next(model.parameters()).device
    # The local norm in the gradients' own dtype (no fp64 copy of every gradient), summed
    # over ranks in fp64.
    square = (_total_norm(counted).double().square() if counted
              else torch.zeros((), dtype=torch.float64, device=device))
    sums = torch.stack([square, square.new_tensor(stop_votes)])
    for axis in ("pipe", "depth", "row", "col"):
        all_reduce(sums, grid.axis(axis))
    norm, votes = sums[0].sqrt().item(), sums[1].item()
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for param in model.parameters():
            param.grad.mul_(scale)
    return norm, votes
