"""Layout-independent initialization.

Every weight is defined as a global tensor whose rows come in fixed chunks, each drawn
from a generator seeded by (seed, parameter name, chunk index). A rank generates only
the chunks that cover its rows, keeps its block's columns and its depth slice, so the
same seed gives the same full model on every layout and no rank ever holds more than
its rows of a large weight.
"""

from __future__ import annotations

import zlib

import torch

from axon.parallel.sharding import named_shardings, shard_from_global

CHUNK_ELEMENTS = 1 << 20  # rows per chunk = CHUNK_ELEMENTS // row length (depends on the shape only)


def _chunk_seed(seed: int, name: str, chunk: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 10_007 + chunk) % (2**63 - 1)


def _normal_rows(name: str, seed: int, shape: tuple[int, int], rows: slice, std: float) -> torch.Tensor:
    """Rows `rows` of the global [out, in] matrix N(0, std^2), generated chunk by chunk."""
    out_features, in_features = shape
    per_chunk = max(1, CHUNK_ELEMENTS // in_features)
    first, last = rows.start // per_chunk, (rows.stop - 1) // per_chunk
    pieces = []
    for chunk in range(first, last + 1):
        n = min(per_chunk, out_features - chunk * per_chunk)
        gen = torch.Generator().manual_seed(_chunk_seed(seed, name, chunk))
        pieces.append(torch.randn(n, in_features, generator=gen))
    block = torch.cat(pieces)
    offset = rows.start - first * per_chunk
    return block[offset: offset + rows.stop - rows.start].mul_(std)


@torch.no_grad()
def initialize_parameters(model, grid, seed: int) -> None:
    if any(p.is_meta for p in model.parameters()):
        return  # a dry run (axon.planning.dry_run) builds shapes only: there is nothing to draw
    for name, param, sharding in named_shardings(model):
        if len(sharding.global_shape) == 1:  # norm gains
            param.fill_(1.0)
            continue
        std = model.get_submodule(name.rsplit(".", 1)[0]).init_std

        def draw(rows, cols, name=name, std=std, shape=sharding.global_shape):
            return _normal_rows(name, seed, shape, rows, std)[:, cols]

        param.copy_(shard_from_global(sharding, grid, draw, param.numel()))
