"""Vocab-parallel embedding: the table is split over vocab (row) and hidden (col),
and each block is depth-sharded like a linear layer's.

A rank looks up only the token ids inside its vocab range, writes zeros elsewhere,
and the partial rows are summed over row. The output is the residual-stream layout:
hidden split over col, replicated over row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from axon.parallel.comm import scatter_block_grad, sum_partials
from axon.parallel.prefetch import fetch_weight
from axon.parallel.sharding import Sharding


class VocabParallelEmbedding(nn.Module):
    def __init__(self, grid, vocab: int, hidden: int, init_std: float):
        super().__init__()
        self.sharding = Sharding((vocab, hidden), ("row", "col"), depth_sharded=True)
        self.init_std = init_std
        self.block_shape = self.sharding.block_shape(grid)
        self.vocab_start = self.sharding.block_slices(grid)[0].start
        self.row_axis, self.depth_axis = grid.axis("row"), grid.axis("depth")
        self.weight = nn.Parameter(torch.empty(self.sharding.shard_numel(grid)))
        self.prefetcher = None  # WeightPrefetcher: OAG's depth all-gathers issued ahead
        self.grad_reduce_dtype = None  # the gradient's depth reduce-scatter wire dtype; None = fp32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = _GatheredTable.apply(self.weight, self)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.block_shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), table)
        rows = rows.masked_fill(outside.unsqueeze(-1), 0.0)
        return sum_partials(rows, self.row_axis)



class _GatheredTable(torch.autograd.Function):
    """Forward: the table block rebuilt from its depth shards; backward: its gradient summed
    over depth and scattered back to this rank's shard."""

    @staticmethod
    def forward(ctx, shard, module):
        ctx.module = module
        return fetch_weight(module, shard.dtype)

    @staticmethod
    def backward(ctx, dtable):
        module = ctx.module
        return scatter_block_grad(dtable, module.weight.numel(), module.depth_axis, module.grad_reduce_dtype), None
