"""`train.micro_batch: 0` sized by memory: the largest micro-batch that fits a byte budget.

The caller says how many bytes per device a micro-batch of m sequences needs (on GPUs,
axon.planning.micro_batch asks perfmodel's memory model) and how many bytes it may use. The
micro-batch divides each data x depth shard's sequences and keeps the pipeline's rule of
`split_micro_batches`: with layout.pipe > 1, at least 4 x pipe micro-batches per step where the
batch allows (else 1). When even 1 sequence does not fit, it is 1 all the same, said so: the
memory check elsewhere decides whether a run may start, not this rule. Without a memory model
(a CPU run has no device memory to size by) auto is `split_micro_batches`' rule unchanged.
"""

from __future__ import annotations

from typing import Callable

from axon.spec.training import split_micro_batches

GIB = 2.0 ** 30
PER_STAGE = 4  # micro-batches per pipeline stage the automatic choice keeps (split_micro_batches)


def allowed_micro_batches(per_shard: int, pipe: int, virtual_stages: int = 1) -> list[int]:
    """The micro-batches auto may pick, smallest first: divisors of the shard's sequences giving
    PER_STAGE x pipe micro-batches or more with a pipeline (only 1 when none does); interleaved
    (virtual_stages > 1), also a multiple of pipe, as axon.spec.layout_rules requires."""
    sizes = [m for m in range(1, per_shard + 1) if per_shard % m == 0]
    if pipe > 1:
        sizes = [m for m in sizes if per_shard // m >= PER_STAGE * pipe]
        if virtual_stages > 1:
            sizes = [m for m in sizes if (per_shard // m) % pipe == 0]
    return sizes or [1]


def largest_fitting_micro_batch(global_batch: int, shards: int, pipe: int,
                                needed: Callable[[int], float] | None = None, budget: float | None = None,
                                virtual_stages: int = 1, budget_text: str = "") -> tuple[int, str]:
    """(sequences per micro-batch, why: a phrase for the banner) for `shards` = data x depth
    shards, whose count must divide `global_batch`. `needed(m)` is the bytes per device at
    micro-batch m, `budget` the bytes there are (`budget_text` says what they are; by default
    "B GiB"). Without them: today's rule (`split_micro_batches` with micro_batch 0)."""
    if global_batch % shards:
        raise ValueError(f"global batch {global_batch} does not divide over {shards} data x depth shards")
    per_shard = global_batch // shards
    rule = (f"4 x layout.pipe = {PER_STAGE * pipe} micro-batches per step" if pipe > 1 else "")
    if needed is None or budget is None:
        micro, _ = split_micro_batches(global_batch, 0, shards, pipe)
        if pipe == 1:
            return micro, f"no device memory to size by: all {per_shard} sequences of a data x depth shard at once"
        if per_shard // micro >= PER_STAGE * pipe:
            return micro, f"no device memory to size by: the largest micro-batch that gives {rule}"
        return micro, f"no device memory to size by: 1, as no micro-batch gives {rule}"
    sizes = allowed_micro_batches(per_shard, pipe, virtual_stages)
    budget_text = budget_text or f"{budget / GIB:.1f} GiB"
    too_big = None  # (micro, bytes) of the smallest size tried that does not fit
    for micro in reversed(sizes):
        need = needed(micro)
        if need <= budget:
            break
        too_big = (micro, need)
    else:
        return 1, (f"even 1 sequence per micro-batch needs {need / GIB:.1f} GiB per device by perfmodel's "
                   f"memory model, more than {budget_text}: it does not fit")
    fits = f"{need / GIB:.1f} GiB per device by perfmodel's memory model, within {budget_text}"
    if too_big is not None:
        bigger, bigger_need = too_big
        return micro, (f"the largest divisor of a data x depth shard's {per_shard} sequences that fits: "
                       f"{fits}; {bigger} would need {bigger_need / GIB:.1f} GiB")
    if pipe > 1 and per_shard // micro >= PER_STAGE * pipe:
        return micro, f"the largest micro-batch that gives {rule}; it needs {fits}"
    if pipe > 1:
        return micro, f"1, as no micro-batch gives {rule}; it needs {fits}"
    return micro, f"all {per_shard} sequences of a data x depth shard at once: {fits}"
