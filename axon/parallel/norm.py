"""RMSNorm over a hidden dimension that is split over col.

The sum of squares is all-reduced over col before normalizing, so every rank
normalizes by the statistics of the whole hidden vector, exactly as one device would.
The local math around that one all-reduce is `local_math`'s (eager, or compiled with
train.compile); without a col split there is no collective and the norm is one function.
"""

from __future__ import annotations

import torch
from torch import nn

from axon.kernels.local_math import EAGER
from axon.parallel.comm import sum_over_group
from axon.parallel.sharding import Sharding


class ShardedRMSNorm(nn.Module):
    def __init__(self, grid, hidden: int, eps: float):
        super().__init__()
        self.sharding = Sharding((hidden,), ("col",), depth_sharded=False)
        self.hidden, self.eps = hidden, eps
        self.col_axis = grid.axis("col")
        self.weight = nn.Parameter(torch.ones(self.sharding.block_shape(grid)))
        self.local_math = EAGER  # Llama.compile_local_math swaps in the compiled functions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        math = self.local_math
        if self.col_axis.group is None:
            return math.rms_norm(x, self.weight, self.hidden, self.eps)
        # Eager, one fp32 copy serves both halves and is the one backward keeps; compiled, each
        # half widens x inside its own kernel and nothing fp32 is stored.
        source = x if math.compiled else x.float()
        squares = sum_over_group(math.square_sum(source), self.col_axis)
        return math.rms_scale(source, squares, self.weight, self.hidden, self.eps).to(x.dtype)

    def add_and_normalize(self, x: torch.Tensor, update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + update, the norm of it): a block's middle residual add, fused with this norm."""
        math = self.local_math
        if self.col_axis.group is None:
            return math.add_rms_norm(x, update, self.weight, self.hidden, self.eps)
        if not math.compiled:
            total = x + update
            return total, self(total)
        total, squares = math.add_square_sum(x, update)
        squares = sum_over_group(squares, self.col_axis)
        return total, math.rms_scale(total, squares, self.weight, self.hidden, self.eps)

    def warm_up_calls(self, x: torch.Tensor) -> list:
        """(function, args) pairs exercising what forward and add_and_normalize run on input like `x`."""
        weight = nn.Parameter(self.weight.detach().clone())  # a Parameter, as in training (dynamo guards on the type)
        if self.col_axis.group is None:
            return [("rms_norm", (x, weight, self.hidden, self.eps)),
                    ("add_rms_norm", (x, x.detach().clone().requires_grad_(), weight, self.hidden, self.eps))]
        squares = torch.ones(*x.shape[:-1], 1, device=x.device, requires_grad=True)
        return [("square_sum", (x,)), ("rms_scale", (x, squares, weight, self.hidden, self.eps)),
                ("add_square_sum", (x, x.detach().clone().requires_grad_()))]
