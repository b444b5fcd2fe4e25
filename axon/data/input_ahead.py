"""The next step's input, assembled while this step runs.

A step's micro-batches come from the token source on the host (a synthetic stream or a
token file, read and stacked), with their Goldfish keep masks hashed from the same host
arrays. One background thread assembles the next step's while the current one computes, so
the step finds its input ready and only copies it to the device. The thread touches numpy
only: every torch call stays on the training thread, in its order.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np

from axon.data.batches import host_micro_batches, to_device


class StepInput(NamedTuple):
    batches: list  # (inputs, targets) per micro-batch, on the device
    keeps: list  # the Goldfish keep mask [micro, seq_len] of each micro-batch on the device, or None each
    kept: int  # target tokens this rank's micro-batches keep (all of them without a mask): counted on the host
    wait_s: float  # how long the step waited for its input


class InputAhead:
    def __init__(self, source, config, grid, device, keep: Callable[[np.ndarray], np.ndarray] | None = None):
        """`keep` (tokens [micro, seq_len + 1] -> bool [micro, seq_len]) masks targets out of the loss."""
        self.source, self.config, self.grid, self.device, self.keep = source, config, grid, device, keep
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axon-input")
        self._next: tuple[int, Future] | None = None

    def _assemble(self, first_sequence: int) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        arrays = host_micro_batches(self.source, self.config, self.grid, first_sequence)
        return arrays, None if self.keep is None else [self.keep(a) for a in arrays]

    def prepare(self, first_sequence: int) -> None:
        """Start assembling the step whose global batch starts at `first_sequence`."""
        self._next = (first_sequence, self._pool.submit(self._assemble, first_sequence))

    def take(self, first_sequence: int) -> StepInput:
        """The step's input on the device, and the seconds the step waited for it (assembled
        here when nothing, or another position, was prepared: the first step, a resume)."""
        started = time.perf_counter()
        prepared, self._next = self._next, None
        if prepared is not None and prepared[0] == first_sequence:
            arrays, masks = prepared[1].result()  # a bad token id found ahead is raised here, at its own step
        else:
            arrays, masks = self._assemble(first_sequence)
        batches = to_device(arrays, self.device)
        if masks is None:
            keeps, kept = [None] * len(batches), sum(a.shape[0] * (a.shape[1] - 1) for a in arrays)
        else:
            keeps, kept = to_device(masks, self.device, pairs=False), int(sum(m.sum() for m in masks))
        return StepInput(batches, keeps, kept, time.perf_counter() - started)
