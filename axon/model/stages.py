"""Which global blocks each pipeline stage holds: `train.stage_layers` if given, else the
parameter-balanced split of `perfmodel.stages`."""

from __future__ import annotations

from perfmodel.models import ModelShape
from perfmodel.stages import balanced_counts


def stage_layers(shape: ModelShape, stages: int, counts: tuple[int, ...] = ()) -> list[range]:
    """The global block indices of every stage."""
    counts = list(counts) if counts else balanced_counts(shape, stages)
    out, start = [], 0
    for count in counts:
        out.append(range(start, start + count))
        start += count
    return out
