"""GEMM mode selection: time every candidate on a GEMM's first use, keep the fastest for the run.

A GEMM is identified by its key: shape (M, N, K), dtype, device, the operand layouts as the
caller holds them, and the torch version (a new torch may bring new kernels). The first
call with a new key times the candidates of axon.kernels.gemm on the real operands (warm-up,
then the median of a few samples) unless the cache file already holds a choice for the key;
every later call runs the chosen candidate directly. Candidates whose operand copies would
exceed `max_copy_bytes` are never run, and `peak_extra_bytes` reports the most any call
allocated beyond its output.

Choices are per process. In a distributed run two ranks may pick differently for the same
key; that is safe because a GEMM is local (no collective inside it, so the choice cannot
change which collectives run or their order) and results differ only by summation order.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from axon.kernels.gemm import CANDIDATES, extra_bytes, held_mode, run_candidate
from axon.kernels.gemm_cache import GemmCache
from axon.kernels.timing import median_times

DEFAULT_MAX_COPY_BYTES = 512 * 2**20
# Another mode must beat the product as held by this fraction to be chosen. Measured on 2 CPU
# cores (benchmarks/gemm_tuning.py), ~3% isolated wins did not survive inside a training step.
DEFAULT_MIN_GAIN = 0.05


def device_name(device: torch.device) -> str:
    """The device as a cache key names it: the GPU's product name, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":  # the winner on a CPU depends on how many threads the BLAS uses
        return f"cpu {platform.machine()} {torch.get_num_threads()} threads"
    return device.type


@dataclass(frozen=True)
class GemmChoice:
    """What the tuner chose for one key, and the evidence."""

    label: str  # the role of the GEMM that first used the key ("forward", "dX", "dW", ...)
    shape: tuple[int, int, int]  # M, N, K of C[M, N] = A[M, K] @ B[K, N]
    dtype: str
    held: str  # the operand layouts as the caller holds them, e.g. "NT" for x @ weight.t()
    best: str
    candidates: dict[str, float]  # median seconds per timed candidate
    skipped: dict[str, int] = field(default_factory=dict)  # candidate -> bytes it would copy
    source: str = "timed"  # or "cache"

    def speedup(self) -> float:
        """How much faster the chosen candidate is than the product as held (1.0 when untimed)."""
        if self.held not in self.candidates or self.best not in self.candidates:
            return 1.0
        return self.candidates[self.held] / self.candidates[self.best]

    def describe(self) -> str:
        m, n, k = self.shape
        times = ", ".join(f"{name} {seconds * 1e3:.3f}" for name, seconds in
                          sorted(self.candidates.items(), key=lambda item: item[1]))
        skipped = "".join(f"; {name} skipped ({size / 2**20:.0f} MiB copy)" for name, size in self.skipped.items())
        return (f"GEMM {self.label} M={m} N={n} K={k} {self.dtype} held {self.held}: {self.best} "
                f"({self.speedup():.2f}x vs held, {self.source}) [ms: {times}{skipped}]")


class GemmTuner:
    """C = A @ B through the fastest candidate for each key. `cache_path`: JSON file loaded now
    (None: no file). `writer`: whether this process writes it (a training run gives one rank
    per pipeline stage the file; the others read it and keep their choices in memory).
    `write_each_key`: write after each newly timed key, as a tuner alone in its process may;
    off, only `flush` writes (the Trainer's, between steps). `candidates`: the names allowed.
    `min_gain`: how much faster than the product as held another mode must be to replace it.
    `on_choice`: called once per key with its GemmChoice (the choices also accumulate in
    `choices` for a caller that prints them later)."""

    def __init__(self, cache_path=None, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES,
                 candidates: Iterable[str] = CANDIDATES, warmup: int = 2, repeats: int = 5,
                 min_gain: float = DEFAULT_MIN_GAIN, on_choice: Callable[[GemmChoice], None] | None = None,
                 writer: bool = True, write_each_key: bool = True):
        unknown = set(candidates) - set(CANDIDATES)
        if unknown:
            raise ValueError(f"unknown GEMM candidate(s) {sorted(unknown)}; choose from {list(CANDIDATES)}")
        self.cache, self.write_each_key = GemmCache(cache_path, writer), write_each_key
        self.max_copy_bytes, self.allowed = max_copy_bytes, tuple(candidates)
        self.warmup, self.repeats, self.min_gain, self.on_choice = warmup, repeats, min_gain, on_choice
        self.best: dict[tuple, str] = {}  # (M, K, N, dtype, device, held) -> what every later call runs
        self.choices: list[GemmChoice] = []
        self.peak_extra_bytes = 0  # the most one call (tuning included) allocated beyond its output

    def flush(self) -> bool:
        """Write the choices timed since the last write to the cache file (writers only); whether it wrote."""
        return self.cache.flush()

    def key(self, a: torch.Tensor, b: torch.Tensor, held: str) -> str:
        (m, k), n = a.shape, b.shape[1]
        dtype = str(a.dtype).removeprefix("torch.")
        return f"torch {torch.__version__}|{device_name(a.device)}|{dtype}|{m}x{n}x{k}|{held}"

    def matmul(self, a: torch.Tensor, b: torch.Tensor, label: str = "gemm") -> torch.Tensor:
        """A[M, K] @ B[K, N] -> row-major C[M, N]."""
        held = held_mode(a, b)
        if held is None:  # strided operands lie in neither layout: nothing to choose between
            return torch.mm(a, b)
        # A tuple lookup per call (a few microseconds); the string key is built on a miss only.
        known = (*a.shape, b.shape[1], a.dtype, a.device, held)
        best = self.best.get(known)
        if best is None:
            best = self.best[known] = self._choose(self.key(a, b, held), a, b, held, label).best
            self.peak_extra_bytes = max(self.peak_extra_bytes, extra_bytes(best, a, b))  # the same every call
        return torch.mm(a, b) if best == held else run_candidate(best, a, b)

    def feasible(self, a: torch.Tensor, b: torch.Tensor, held: str) -> tuple[list[str], dict[str, int]]:
        """(allowed candidates within the copy limit, the allowed ones over it -> their bytes).
        The product as held copies nothing, so it is the fallback when nothing else fits."""
        sizes = {name: extra_bytes(name, a, b) for name in self.allowed}
        fits = [name for name, size in sizes.items() if size <= self.max_copy_bytes]
        return fits or [held], {name: size for name, size in sizes.items() if size > self.max_copy_bytes}

    def time_candidates(self, a: torch.Tensor, b: torch.Tensor, names: list[str]) -> dict[str, float]:
        """Median seconds of each named candidate on these operands."""
        with torch.no_grad():
            runs = {name: (lambda name=name: run_candidate(name, a, b)) for name in names}
            times = median_times(runs, a.device, self.warmup, self.repeats)
        self.peak_extra_bytes = max(self.peak_extra_bytes, *(extra_bytes(name, a, b) for name in names))
        return times

    def pick(self, times: dict[str, float], held: str) -> str:
        """The fastest candidate, unless the product as held is within `min_gain` of it: a gain
        that small is within timing noise and does not pay for a copy on every call."""
        fastest = min(times, key=times.get)
        if held in times and times[held] <= times[fastest] * (1 + self.min_gain):
            return held
        return fastest

    def _choose(self, key: str, a, b, held: str, label: str) -> GemmChoice:
        names, skipped = self.feasible(a, b, held)
        (m, k), n = a.shape, b.shape[1]
        describe = dict(label=label, shape=(m, n, k), dtype=str(a.dtype).removeprefix("torch."), held=held)
        cached = self.cache.get(key)
        if cached is not None and cached["best"] in names:
            choice = GemmChoice(**describe, best=cached["best"], candidates=cached["candidates"],
                                skipped=skipped, source="cache")
        else:
            times = self.time_candidates(a, b, names) if len(names) > 1 else {}
            best = self.pick(times, held) if times else names[0]
            choice = GemmChoice(**describe, best=best, candidates=times, skipped=skipped)
            if times:  # only a measured choice is worth keeping for the next run
                self.cache.put(key, {"best": best, "candidates": times})
                if self.write_each_key:
                    self.cache.flush()
        self.choices.append(choice)
        if self.on_choice is not None:
            self.on_choice(choice)
        return choice
