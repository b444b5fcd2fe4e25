"""The next step's input, assembled while this step runs.

A step's micro-batches come from the token source on the host (a synthetic stream is built
token position by position; a token file is read and stacked). One background thread
assembles the next step's while the current one computes, so the step finds its input ready
and only copies it to the device. The thread touches numpy only: every torch call stays on
the training thread, in its order.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from axon.data.batches import host_micro_batches, to_device


class InputAhead:
    def __init__(self, source, config, grid, device):
        self.source, self.config, self.grid, self.device = source, config, grid, device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="axon-input")
        self._next: tuple[int, Future] | None = None

    def prepare(self, first_sequence: int) -> None:
        """Start assembling the step whose global batch starts at `first_sequence`."""
        self._next = (first_sequence, self._pool.submit(host_micro_batches, self.source, self.config, self.grid,
                                                        first_sequence))

    def take(self, first_sequence: int) -> tuple[list, float]:
        """The step's (inputs, targets) on the device, and the seconds the step waited for them
        (assembled here when nothing, or another position, was prepared: the first step, a resume)."""
        started = time.perf_counter()
        prepared, self._next = self._next, None
        if prepared is not None and prepared[0] == first_sequence:
            arrays = prepared[1].result()  # a bad token id found ahead is raised here, at its own step
        else:
            arrays = host_micro_batches(self.source, self.config, self.grid, first_sequence)
        batches = to_device(arrays, self.device)
        return batches, time.perf_counter() - started
