"""The peak a throughput figure is measured against: a large GEMM timed in the same run."""

from __future__ import annotations

import statistics
import time

import torch


def measure_gemm_tflops(device: torch.device, dtype=torch.float32, size: int | None = None,
                        repeats: int = 5) -> float:
    """Median TFLOP/s of a square GEMM on `device` (2 n^3 flops per product)."""
    if size is None:
        size = 2048 if device.type == "cpu" else 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pools, kernel selection
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times) / 1e12
