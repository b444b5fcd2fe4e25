"""The training setup a prediction is for: batch, sequence, dtype, recompute, overlaps."""

from __future__ import annotations

from dataclasses import dataclass

from axon.spec.sections import FieldError

OVERLAPS = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")  # axon's overlap.* switches
# With ORS on, the engine waits for the oldest weight-gradient reduce-scatter once this many
# are in flight (axon.parallel.overlap); the memory model holds each block until then.
REDUCE_SCATTERS_IN_FLIGHT = 4


@dataclass(frozen=True)
class TrainingSetup:
    global_batch: int  # sequences per optimizer step
    seq_len: int
    micro_batch: int = 0  # sequences per micro-batch per data x depth shard; 0 = automatic
    dtype: str = "bfloat16"  # compute dtype; master weights and optimizer state stay fp32
    recompute: str = "none"  # "none" or "block"
    overlap: tuple[str, ...] = OVERLAPS  # which overlaps are on
    prefetch_distance: int = 2
    bucket_mb: float = 25.0
    grad_reduce_dtype: str = "float32"  # dtype of the data all-reduces and depth reduce-scatters of gradients

    def __post_init__(self):
        """Each mistake is a FieldError naming the field: the engine's config, a scaling study and
        perfmodel's command line say which of their keys it is."""
        for name in ("global_batch", "seq_len"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.micro_batch < 0:
            raise FieldError("micro_batch", f"must be at least 1 (or 0 for automatic), got {self.micro_batch}")
        for name in ("dtype", "grad_reduce_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise FieldError(name, f"must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")
        if self.recompute not in ("none", "block"):
            raise FieldError("recompute", f"must be 'none' or 'block', got {self.recompute!r}")
        unknown = set(self.overlap) - set(OVERLAPS)
        if unknown:
            raise FieldError("overlap", f"names unknown overlap(s) {', '.join(sorted(unknown))}; "
                                        f"known: {', '.join(OVERLAPS)}")
        if self.prefetch_distance < 1:
            raise FieldError("prefetch_distance", f"must be at least 1 (overlap.all_gather: false turns prefetching "
                                                  f"off), got {self.prefetch_distance}")
        if self.bucket_mb <= 0:
            raise FieldError("bucket_mb", f"must be positive, got {self.bucket_mb}")

    def micro_batches(self, shards: int, pipe: int) -> tuple[int, int] | None:
        """(sequences per micro-batch, micro-batches per step) for data x depth = `shards`,
        or None when the batch does not divide (see `split_micro_batches`)."""
        return split_micro_batches(self.global_batch, self.micro_batch, shards, pipe)


def _smallest_divisor_at_least(n: int, low: int) -> int | None:
    """The smallest divisor of n that is >= low, or None; O(sqrt n), as a planner asks this for
    thousands of layouts with batches of 10^5 sequences per shard."""
    best, i = None, 1
    while i * i <= n:
        if n % i == 0:
            for divisor in (i, n // i):
                if divisor >= low and (best is None or divisor < best):
                    best = divisor
        i += 1
    return best


def split_micro_batches(global_batch: int, micro_batch: int, shards: int, pipe: int) -> tuple[int, int] | None:
    """(sequences per micro-batch, micro-batches per step) for data x depth = `shards`, or None
    when the batch does not divide. micro_batch 0 is automatic: one micro-batch without a
    pipeline; with one, the biggest micro-batch that still gives 4 per stage (a bubble of at
    most (p-1)/4p), else 1."""
    if global_batch % shards:
        return None
    per_shard = global_batch // shards
    micro = micro_batch
    if micro == 0:
        micro = per_shard
        if pipe > 1:  # the fewest micro-batches that is a divisor and at least 4 per stage
            count = _smallest_divisor_at_least(per_shard, 4 * pipe)
            micro = per_shard // count if count else 1
    if per_shard % micro:
        return None
    return micro, per_shard // micro
