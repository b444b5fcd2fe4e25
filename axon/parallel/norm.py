"""RMSNorm over a hidden dimension that is split over col.

The sum of squares is all-reduced over col before normalizing, so every rank
normalizes by the statistics of the whole hidden vector, exactly as one device would.
"""

from __future__ import annotations

import torch
from torch import nn

from axon.parallel.comm import sum_over_group
from axon.parallel.sharding import Sharding


class ShardedRMSNorm(nn.Module):
    def __init__(self, grid, hidden: int, eps: float):
        super().__init__()
        self.sharding = Sharding((hidden,), ("col",), depth_sharded=False)
        self.hidden, self.eps = hidden, eps
        self.col_axis = grid.axis("col")
        self.weight = nn.Parameter(torch.ones(self.sharding.block_shape(grid)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # statistics in fp32 whatever the compute dtype
        square_sum = sum_over_group(x32.pow(2).sum(-1, keepdim=True), self.col_axis)
        return (x32 * torch.rsqrt(square_sum / self.hidden + self.eps) * self.weight).to(x.dtype)
