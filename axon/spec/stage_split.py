"""How many blocks each pipeline stage holds by default (the engine's split, which the
performance model prices too).

Stages hold contiguous runs of transformer blocks; the first also holds the embedding, the
last the final norm, the LM head and the loss. The split balances parameters (the embedding
and head weigh as much as several blocks in a small model), found exactly by a small
dynamic program.
"""

from __future__ import annotations

from functools import lru_cache

from axon.spec.shapes import ModelShape
from axon.spec.parameters import block_parameters, embedding_parameters, head_parameters


def balanced_counts(shape: ModelShape, stages: int) -> list[int]:
    """Blocks per stage (each at least 1) minimizing the largest stage's parameter count.
    Interleaved (layout.virtual_stages v), the engine splits into p x v chunks this way."""
    return list(_balanced_counts(shape, stages))


def stage_block_counts(shape: ModelShape, stages: int, chunks: int = 1) -> list[int]:
    """Blocks each stage holds: with v chunks per stage, stage s holds chunks s, s + p, ..."""
    counts = balanced_counts(shape, stages * chunks)
    return [sum(counts[s::stages]) for s in range(stages)]


@lru_cache(maxsize=256)  # O(stages x layers^2): a plan asks for each stage count many times
def _balanced_counts(shape: ModelShape, stages: int) -> tuple[int, ...]:
    layers, block = shape.layers, block_parameters(shape)
    embedding, head = embedding_parameters(shape), head_parameters(shape)
    # best[s][n]: the smallest possible maximum load placing the first n blocks on s stages.
    inf = float("inf")
    best = [[inf] * (layers + 1) for _ in range(stages + 1)]
    cut = [[0] * (layers + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for s in range(1, stages + 1):
        for n in range(s, layers - (stages - s) + 1):
            for k in range(s - 1, n):  # the previous stages hold k blocks, this one n - k
                load = (n - k) * block + (embedding if s == 1 else 0) + (head if s == stages else 0)
                value = max(best[s - 1][k], load)
                if value < best[s][n]:
                    best[s][n], cut[s][n] = value, k
    counts, n = [], layers
    for s in range(stages, 0, -1):
        counts.append(n - cut[s][n])
        n = cut[s][n]
    return tuple(counts[::-1])
