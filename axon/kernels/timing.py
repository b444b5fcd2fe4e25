"""Median time of a few ways to do the same work, measured so that a GPU's time is counted.

On CUDA/ROCm kernels run asynchronously: a host clock read right after a launch measures the
launch (DESIGN §10). Each sample is therefore bracketed by CUDA events on the device's
current stream and read only after the end event has completed. On CPU the host clock is
the work's clock. Candidates are timed round-robin, one sample each per round, so machine
noise (another process, frequency changes) hits all of them alike.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch


class DeviceClock:
    """Seconds per call of `fn`, averaged over `calls` back-to-back calls."""

    def __init__(self, device: torch.device):
        self.device = device

    def seconds(self, fn: Callable[[], object], calls: int) -> float:
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(calls):
                fn()
            end.record(stream)
            end.synchronize()  # the device has finished everything up to `end`
            return start.elapsed_time(end) / 1e3 / calls
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


def median_times(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                 repeats: int = 5, min_sample_s: float = 2e-4) -> dict[str, float]:
    """Median seconds per call of each function after `warmup` untimed calls (thread pools,
    library handles, kernel selection). A sample repeats a call enough times to last about
    `min_sample_s`, so microsecond GEMMs are not measured at the clock's resolution."""
    clock = DeviceClock(device)
    calls = {}
    for name, fn in fns.items():
        for _ in range(max(0, warmup - 1)):
            fn()
        once = max(clock.seconds(fn, 1), 1e-7)  # the last warm-up call, timed to size the samples
        calls[name] = min(100, max(1, math.ceil(min_sample_s / once)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(clock.seconds(fn, calls[name]))
    return {name: statistics.median(values) for name, values in samples.items()}
