"""Data-parallel gradient reduction in buckets, launched while backward still runs.

Tokens are split over data and depth, so every gradient must end up summed over those two
axes and nothing else:
* depth-sharded weights (linear layers, embedding): backward already reduce-scattered each
  block's gradient over depth; the shard is all-reduced over data here.
* replicated weights (RMSNorm gains, split over col only): all-reduced over data and depth
  at once. Row ranks see the same tokens and the same hidden slice, so their gradients are
  already identical: no reduction over row.

Parameters fill buckets of about `bucket_mb` in the order backward produces their
gradients. With overlap on, a bucket is flattened and all-reduced as soon as every gradient
in it is final (the step's last micro-batch), strictly in bucket order so that every rank
issues the same collectives. A bucket whose gradients come from ORS reduce-scatters waits
one more readiness event before launching, so its newest reduce-scatter is not waited for
the moment it was issued. With overlap off the same buckets are reduced after backward:
the switch changes no number.

Each bucket owns one persistent flat buffer, and each of its parameters' `.grad` is a view
into it from construction on (as DDP's `gradient_as_bucket_view`): autograd and ORS
accumulate into the views in place, the all-reduce runs in place on the buffer, and
gradients are held once, never copied into a second flat tensor. `zero_grad` zeroes the
buffers at the start of a step instead of dropping the gradients.

train.grad_reduce_dtype: bfloat16 sends every gradient reduction (these all-reduces and the
depth reduce-scatters in backward) as a bf16 copy, half the bytes; the sums land in the fp32
buffers. float32, the default, reduces the buffers themselves.
"""

from __future__ import annotations

import torch

from axon.parallel.comm import all_reduce, all_reduce_start
from axon.parallel.overlap import depth_sharded_modules
from axon.parallel.sharding import named_shardings


class _Bucket:
    def __init__(self, params: list[torch.nn.Parameter], axis):
        self.params, self.axis = params, axis
        first = params[0]
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
        self.views, offset = {}, 0
        for param in params:
            self.views[param] = self.buffer[offset:offset + param.numel()].view_as(param)
            offset += param.numel()
        self.reset()

    def reset(self) -> None:
        self.missing = len(self.params)  # gradients of the last micro-batch not yet final
        self.ready_at = None  # readiness event at which the last one came in
        self.handle = None

    def zero_grad(self) -> None:
        self.buffer.zero_()
        for param, view in self.views.items():
            param.grad = view

    def adopt_gradients(self) -> None:
        """Make every gradient its view again. Only a gradient someone dropped or replaced (a
        set_to_none zero_grad) is copied in; None means unused this step: zeros."""
        for param, view in self.views.items():
            if param.grad is view:
                continue
            if param.grad is None:
                view.zero_()
            else:
                view.copy_(param.grad)
            param.grad = view


def _split_by_size(params: list[torch.nn.Parameter], limit_bytes: float) -> list[list[torch.nn.Parameter]]:
    """Consecutive runs of about `limit_bytes`; a bucket is one buffer, so one dtype and device."""
    buckets, current, size = [], [], 0
    for param in params:
        kind_changes = current and (param.dtype, param.device) != (current[0].dtype, current[0].device)
        if current and (kind_changes or size + param.numel() * param.element_size() > limit_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(param)
        size += param.numel() * param.element_size()
    return buckets + [current] if current else buckets


class GradientBuckets:
    """Sums one model's gradients over data (and replicated ones over depth too)."""

    def __init__(self, model, grid, bucket_mb: float, overlap: bool, pending, reduce_dtype: str = "float32"):
        sharded, replicated = [], []
        for _, param, sharding in reversed(list(named_shardings(model))):  # roughly backward order
            (sharded if sharding.depth_sharded else replicated).append(param)
        self.params = sharded + replicated
        data, joint = grid.axis("data"), grid.axis("data+depth")
        self.buckets = []
        if data.group is not None:
            self.buckets += [_Bucket(ps, data) for ps in _split_by_size(sharded, bucket_mb * 2**20)]
        if joint.group is not None and replicated:  # a few vectors: one bucket, last
            self.buckets.append(_Bucket(replicated, joint))
        self.bucket_of = {param: bucket for bucket in self.buckets for param in bucket.params}
        self.overlap, self.pending = overlap, pending
        # The wire dtype of every gradient reduction; None (fp32) reduces the gradients themselves.
        self.wire_dtype = None if reduce_dtype == "float32" else getattr(torch, reduce_dtype)
        for module in depth_sharded_modules(model):
            module.grad_reduce_dtype = self.wire_dtype
        self.final_micro_batch = False  # set by the trainer around the step's last backward
        self._ready: set[torch.nn.Parameter] = set()
        self._events = self._next_launch = 0
        self.launched = 0  # buckets launched during backward (rather than after it)
        self.zero_grad()
        if overlap and self.buckets:
            # A gradient is final when autograd accumulates it, or, under ORS, when its
            # reduce-scatter is issued (autograd then receives no gradient for it).
            for param in self.bucket_of:
                param.register_post_accumulate_grad_hook(self._gradient_ready)
            pending.on_issue = self._gradient_ready

    def _gradient_ready(self, param: torch.nn.Parameter) -> None:
        if not self.final_micro_batch or param in self._ready or param not in self.bucket_of:
            return
        self._ready.add(param)
        self._events += 1
        bucket = self.bucket_of[param]
        bucket.missing -= 1
        if bucket.missing == 0:
            bucket.ready_at = self._events
        while self._next_launch < len(self.buckets):
            head = self.buckets[self._next_launch]
            if head.ready_at is None or (head.ready_at == self._events and self._from_reduce_scatters(head)):
                break
            self._launch(head)
            self.launched += 1

    def _from_reduce_scatters(self, bucket: _Bucket) -> bool:
        return any(self.pending.has(param) for param in bucket.params)

    def zero_grad(self) -> None:
        """Start a step: bucketed gradients are zeroed in place and stay views of their buffers;
        the others are dropped, as optimizer.zero_grad(set_to_none=True) does."""
        for bucket in self.buckets:
            bucket.zero_grad()
        for param in self.params:
            if param not in self.bucket_of:
                param.grad = None

    def _launch(self, bucket: _Bucket) -> None:
        for param in bucket.params:
            self.pending.complete(param)  # adds the reduce-scattered shards into the view
        bucket.adopt_gradients()
        if self.overlap:
            bucket.handle = all_reduce_start(bucket.buffer, bucket.axis, wire_dtype=self.wire_dtype)
        else:
            all_reduce(bucket.buffer, bucket.axis, wire_dtype=self.wire_dtype)
        self._next_launch += 1

    def finish(self) -> None:
        """Launch the buckets backward left, wait for all: the gradients, views of the buffers,
        hold the sums. Every gradient is whole afterwards: ORS reductions outside any bucket are
        completed, and parameters the step gave no gradient get zeros."""
        while self._next_launch < len(self.buckets):
            self._launch(self.buckets[self._next_launch])
        self.pending.finish()
        for bucket in self.buckets:
            if bucket.handle is not None:
                bucket.handle.wait()
            bucket.reset()
        for param in self.params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        self._ready.clear()
        self._events = self._next_launch = 0
        self.final_micro_batch = False
