"""Overlap switches and the reductions they leave in flight.

OAR: a linear layer's backward all-reduce of dX runs while its dW GEMM computes.
ORS: the depth reduce-scatter of dW is asynchronous; `PendingReductions` waits for each one
exactly once and accumulates it into the parameter's gradient, in issue order, before
anything reads that gradient.
OAG: depth all-gathers are issued ahead (axon.parallel.prefetch).
DP: data-parallel gradient buckets are reduced during backward (axon.parallel.data_parallel).
The same collectives run in the same order either way, so the switches never change a number.
"""

from __future__ import annotations

import torch

from axon.parallel.prefetch import WeightPrefetcher
from axon.spec.training import REDUCE_SCATTERS_IN_FLIGHT


class PendingReductions:
    """Weight-gradient reduce-scatters still in flight, owned by one model; at most `limit`
    (0: no bound), the oldest parameter's completed when one more is issued.

    Each one in flight holds its whole (depth x shard) gradient block until waited for. Waited
    for only at the step's end, they held every micro-batch's blocks at once (axon dry-run:
    several times the weights per rank); a few in flight still hide each behind the next GEMMs.
    perfmodel's memory counts the same number."""

    def __init__(self, limit: int = REDUCE_SCATTERS_IN_FLIGHT):
        self._pending: dict[torch.nn.Parameter, list[tuple[object, torch.Tensor]]] = {}
        self.issued = self.waited = 0
        self.limit = limit
        self.on_issue = None  # called with the parameter after each reduce-scatter is issued

    def add(self, param: torch.nn.Parameter, handle, shard: torch.Tensor) -> None:
        self._pending.setdefault(param, []).append((handle, shard))
        self.issued += 1
        if self.on_issue is not None:
            self.on_issue(param)
        while self.limit and len(self) > self.limit:
            self.complete(next(iter(self._pending)))  # in issue order, as the unbounded path adds them

    def has(self, param: torch.nn.Parameter) -> bool:
        return param in self._pending

    def complete(self, param: torch.nn.Parameter) -> None:
        """Wait for `param`'s reductions and add them to its gradient in issue order (the order of
        autograd's own accumulation, so results match the synchronous path bit for bit)."""
        for handle, shard in self._pending.pop(param, []):
            handle.wait()
            self.waited += 1
            if param.grad is None:
                param.grad = shard
            else:
                param.grad.add_(shard)

    def finish(self) -> None:
        """Complete every parameter's reductions: gradients are whole from here on."""
        for param in list(self._pending):
            self.complete(param)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._pending.values())


def depth_sharded_modules(model) -> list[torch.nn.Module]:
    """The modules that gather a depth-sharded weight (linear layers and the embedding)."""
    from axon.parallel.embedding import VocabParallelEmbedding
    from axon.parallel.linear import TensorParallelLinear

    return [m for m in model.modules() if isinstance(m, (TensorParallelLinear, VocabParallelEmbedding))]


def enable_overlap(model, overlap, depth_axis) -> tuple[PendingReductions, WeightPrefetcher | None]:
    """Apply the OAR, ORS and OAG switches of `overlap` (the config's overlap section) to every
    depth-sharded module of `model`; returns where ORS leaves its reductions and the prefetcher."""
    from axon.parallel.linear import TensorParallelLinear

    pending = PendingReductions()
    use_prefetch = overlap.all_gather and depth_axis.group is not None
    prefetcher = WeightPrefetcher(overlap.prefetch_distance) if use_prefetch else None
    for module in depth_sharded_modules(model):
        module.prefetcher = prefetcher
        if isinstance(module, TensorParallelLinear):
            module.overlap_all_reduce = overlap.all_reduce
            module.pending = pending if overlap.reduce_scatter else None
    return pending, prefetcher
