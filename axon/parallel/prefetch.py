"""OAG: depth all-gathers of upcoming weights, issued ahead in the order the step runs them.

Which weight is needed next depends on autograd's backward order and on activation
recomputation, so the order is observed rather than predicted: each step records the
sequence of gathers it made, and the next step replays it, keeping `distance` gathers in
flight beyond the one being used. A step that departs from the recording (a different
number of micro-batches, say) gathers synchronously from that point on and is recorded in
turn. Every rank runs the same program, so every rank issues the same gathers in the same
order; an all-gather only copies, so prefetching changes no number.
"""

from __future__ import annotations

import torch

from axon.parallel.comm import all_gather_start, gather_block


def cast_shard(module, dtype: torch.dtype) -> torch.Tensor:
    """The module's weight shard in `dtype`. With `module.keep_cast` the cast copy is kept and
    reused until the weight changes (an in-place update bumps its version; the trainer forgets
    the copies after each optimizer step as well: forget_casts), so a
    bf16 step converts each fp32 master weight once instead of at every use (forward, backward,
    recomputation); without it, or in inference mode (whose tensors autograd cannot save), it is
    cast at every use."""
    weight = module.weight.detach()
    if weight.dtype == dtype or not module.keep_cast or torch.is_inference_mode_enabled():
        return weight.to(dtype)
    kept = module.kept_cast
    if kept is None or kept[0] != weight._version or kept[1] != dtype:
        kept = module.kept_cast = (weight._version, dtype, weight.to(dtype))
    return kept[2]


def forget_casts(modules) -> None:
    """Drop the kept copies after an update the weights' versions do not show (the fused
    AdamW writes the parameters without bumping their version counters)."""
    for module in modules:
        module.kept_cast = None


def gather_now(module, dtype: torch.dtype) -> torch.Tensor:
    """The module's weight block, gathered over depth synchronously, in `dtype`."""
    return gather_block(cast_shard(module, dtype), module.block_shape, module.depth_axis)


def fetch_weight(module, dtype: torch.dtype) -> torch.Tensor:
    """The module's full weight block: from its prefetcher when it has one, else gathered now."""
    prefetcher = module.prefetcher
    return gather_now(module, dtype) if prefetcher is None else prefetcher.gather(module, dtype)


class WeightPrefetcher:
    """Depth all-gathers of one model's weights, issued `distance` gathers ahead."""

    def __init__(self, distance: int):
        self.distance = distance
        self.recorded: list[tuple[torch.nn.Module, torch.dtype]] = []  # the last step's gathers, in order
        self.observed: list[tuple[torch.nn.Module, torch.dtype]] = []
        self.in_flight: dict[int, tuple[torch.Tensor, object]] = {}  # position -> (full buffer, handle)
        self.next_issue = 0
        self.active = self.following = False
        self.prefetched = 0  # gathers served from a prefetch (for tests and the curious)

    def begin_step(self) -> None:
        self.active, self.observed, self.next_issue = True, [], 0
        self.following = bool(self.recorded)

    def gather(self, module, dtype: torch.dtype) -> torch.Tensor:
        if not self.active:  # outside a training step (evaluation, export): nothing to follow
            return gather_now(module, dtype)
        position = len(self.observed)
        self.observed.append((module, dtype))
        if self.following and (position >= len(self.recorded) or self.recorded[position] != (module, dtype)):
            self.following = False  # this step left the recorded order
        if not self.following:
            return gather_now(module, dtype)
        last = min(position + self.distance, len(self.recorded) - 1)
        while self.next_issue <= last:
            ahead, ahead_dtype = self.recorded[self.next_issue]
            shard = cast_shard(ahead, ahead_dtype)
            self.in_flight[self.next_issue] = all_gather_start(shard, ahead.depth_axis)
            self.next_issue += 1
        full, handle = self.in_flight.pop(position)
        handle.wait()
        self.prefetched += 1
        rows, cols = module.block_shape
        return full[: rows * cols].view(rows, cols)

    def end_step(self) -> None:
        """Wait for gathers the step issued but never used (it left the recorded order), and
        keep this step's order for the next one. Safe to call after a failed step."""
        for _, handle in self.in_flight.values():
            handle.wait()
        self.in_flight.clear()
        if self.active:
            self.recorded = self.observed
        self.active = self.following = False
