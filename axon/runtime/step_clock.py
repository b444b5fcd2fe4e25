"""How long a training step took, without making a GPU's host wait for it more than the step's
one read already does.

On a CPU the step's work is done when its calls return: the clock runs from the step's start
to after the optimizer. On a GPU the host only enqueues; a synchronize after the optimizer
would stop the host from preparing the next step while the optimizer's kernels run. There
the clock stops at the step's one host read (the loss and norm, which the device has
finished by then) and the next step's clock starts at that same instant, so the optimizer's
kernels count in the next step's time and consecutive steps' times add up to the run's wall
time. Work between steps that is not training (a checkpoint, an evaluation) pauses the
clock: the next step synchronizes and starts afresh.
"""

from __future__ import annotations

import time
from typing import Callable


class StepClock:
    def __init__(self, runs_ahead: bool, synchronize: Callable[[], None]):
        """`runs_ahead`: the device works behind the host (a GPU); `synchronize` waits for it."""
        self.runs_ahead, self.synchronize = runs_ahead, synchronize
        self.started: float | None = None  # this step's start
        self.carried: float | None = None  # the last step's read, where the next step starts
        self.read_at = 0.0

    def start(self) -> None:
        if self.carried is None:
            if self.runs_ahead:
                self.synchronize()  # the first step after a pause starts with the device idle
            self.started = time.perf_counter()
        else:
            self.started = self.carried

    def read_done(self) -> None:
        """The step's host read returned: the device has done everything the step queued before it."""
        self.read_at = time.perf_counter()

    def stop(self) -> float:
        """After the optimizer was queued: the step's seconds."""
        if self.runs_ahead:
            self.carried = self.read_at
            return self.read_at - self.started
        return time.perf_counter() - self.started

    def pause(self) -> None:
        self.carried = None
