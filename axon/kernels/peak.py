"""The peak a throughput figure is measured against: a GEMM timed in the same run, and the MFU rule."""

from __future__ import annotations

import math
import statistics
import time

import torch


def measure_gemm_tflops(device: torch.device, dtype=torch.float32, size: int | None = None,
                        repeats: int = 5, budget_s: float = 1.5, min_time_s: float = 0.03) -> float:
    """Median TFLOP/s of a square GEMM on `device` (2 n^3 flops per product), in about `budget_s`.
    Without `size`, n doubles from 256 until one product takes `min_time_s` (long enough to time),
    reaches the size where devices are near peak (2048 CPU, 8192 GPU), or the next would not fit
    the budget: a device with a slow dtype (bf16 on a CPU without bf16 units) stops small."""
    deadline = time.perf_counter() + budget_s
    largest = size or (2048 if device.type == "cpu" else 8192)
    n = size or 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        _time_products(a, b, 1)  # warm-up: thread pools, kernel selection, library handles
        once = max(_time_products(a, b, 1), 1e-9)  # a coarse clock may read 0
        # the next size costs ~8x per product, warm-up and timed repeats included
        if once >= min_time_s or n >= largest or time.perf_counter() + 8 * once * (repeats + 2) > deadline:
            break
        n *= 2
    # a short product is timed in a batch: one host clock read per product would time launches
    batch = max(1, math.ceil(min_time_s / once))
    fit = int((deadline - time.perf_counter()) / (batch * once)) if size is None else repeats
    times = [_time_products(a, b, batch) for _ in range(max(1, min(repeats, fit)))]
    return 2.0 * n**3 / statistics.median(times) / 1e12


def _time_products(a: torch.Tensor, b: torch.Tensor, count: int) -> float:
    """Seconds per product of `count` back-to-back a @ b, the device drained before and after."""
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    for _ in range(count):
        torch.mm(a, b)
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return (time.perf_counter() - start) / count


def mfu(tflops_per_rank: float, peak_tflops: float) -> float:
    """The fraction of the peak a step achieved; 0.0 (unknown) where the peak is no peak: not a
    positive finite number, or below the step's own rate (a failed measurement, never >100% MFU).
    0.0 rather than None or NaN keeps metrics.jsonl strict JSON and its column numeric."""
    if failed_peak(peak_tflops) or tflops_per_rank > peak_tflops:
        return 0.0
    return tflops_per_rank / peak_tflops


def failed_peak(peak_tflops: float) -> bool:
    """A peak measurement that gave no usable number (zero, negative, NaN or infinite)."""
    return not (math.isfinite(peak_tflops) and peak_tflops > 0)
