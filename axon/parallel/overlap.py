"""Overlap switches and the reductions they leave in flight.

OAR: a linear layer's backward all-reduce of dX runs while its dW GEMM computes.
ORS: the depth reduce-scatter of dW is asynchronous; `PendingReductions.finish()` waits
for each one exactly once and accumulates it into the parameter's gradient, in issue
order, before anything reads gradients. The same collectives run in the same order
either way, so the switches never change a number.
"""

from __future__ import annotations

import torch


class PendingReductions:
    """Weight-gradient reduce-scatters still in flight, owned by one model."""

    def __init__(self):
        self._pending: list[tuple[torch.nn.Parameter, object, torch.Tensor]] = []
        self.issued = self.waited = 0

    def add(self, param: torch.nn.Parameter, handle, shard: torch.Tensor) -> None:
        self._pending.append((param, handle, shard))
        self.issued += 1

    def finish(self) -> None:
        """Wait for every reduction and add its result to the gradient (the order of autograd's own
        accumulation, so results match the synchronous path bit for bit)."""
        for param, handle, shard in self._pending:
            handle.wait()
            self.waited += 1
            if param.grad is None:
                param.grad = shard
            else:
                param.grad.add_(shard)
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)


def enable_overlap(model, overlap) -> PendingReductions:
    """Apply the switches of `overlap` (the config's overlap section: .all_reduce,
    .reduce_scatter) to every tensor-parallel linear layer of `model`."""
    from axon.parallel.linear import TensorParallelLinear

    pending = PendingReductions()
    for module in model.modules():
        if isinstance(module, TensorParallelLinear):
            module.overlap_all_reduce = overlap.all_reduce
            module.pending = pending if overlap.reduce_scatter else None
    return pending
