"""Which global blocks each pipeline stage holds: `train.stage_layers` if given, else the
parameter-balanced split of `axon.spec.stage_split`. With layout.virtual_stages v the layers are
cut into p x v chunks (virtual stages) and stage s holds chunks s, s + p, ..., s + (v - 1) p."""

from __future__ import annotations

from axon.spec.shapes import ModelShape
from axon.spec.stage_split import balanced_counts


def stage_layers(shape: ModelShape, stages: int, counts: tuple[int, ...] = (), chunks: int = 1) -> list[range]:
    """The global block indices of every virtual stage (every stage when chunks is 1)."""
    counts = list(counts) if counts else balanced_counts(shape, stages * chunks)
    out, start = [], 0
    for count in counts:
        out.append(range(start, start + count))
        start += count
    return out


def chunk_layers(shape: ModelShape, stages: int, stage: int, counts: tuple[int, ...] = (),
                 chunks: int = 1) -> list[range]:
    """The global block indices of each of stage `stage`'s chunks, in chunk order."""
    virtual = stage_layers(shape, stages, counts, chunks)
    return [virtual[c * stages + stage] for c in range(chunks)]
