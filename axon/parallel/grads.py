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


def clip_grad_norm(model, grid, max_norm: float, stop_votes: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most max_norm; return, as one fp64 device
    tensor [norm before clipping, `stop_votes` summed over pipe, depth, row and col].

    No host read: the scale is a device factor applied whatever the norm (1.0 when it is below
    max_norm, an exact no-op), so the caller reads the norm once with the step's other figures.

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
    sums = torch.stack([square, torch.as_tensor(stop_votes, dtype=torch.float64, device=square.device)])
    for axis in ("pipe", "depth", "row", "col"):
        all_reduce(sums, grid.axis(axis))
    norm = sums[0].sqrt()
    if max_norm > 0:
        # Computed in fp64, as the host formula max_norm / (norm + 1e-6) was, then rounded to fp32: the
        # value a Python float becomes in an fp32 (or bf16: fp32 opmath) multiply, and a scalar of
        # the fp32 gradients' own dtype keeps CUDA's foreach kernel on its fast path.
        scale = torch.where(norm > max_norm, max_norm / (norm + 1e-6), torch.ones_like(norm)).float()
        torch._foreach_mul_([param.grad for param in model.parameters()], scale)
    return torch.stack([norm, sums[1]])
