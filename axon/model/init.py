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

from axon.parallel.sharding import named_shardings

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
    for name, param, sharding in named_shardings(model):
        if len(sharding.global_shape) == 1:  # norm gains
            param.fill_(1.0)
            continue
        std = _owner(model, name).init_std
        param.copy_(_initial_shard(name, seed, sharding, grid, std, param.numel()))


def _initial_shard(name, seed, sharding, grid, std, shard_numel) -> torch.Tensor:
    """This rank's depth slice of its [out/r, in/c] block, generating only the rows it touches."""
    row_slice, col_slice = sharding.block_slices(grid)
    block_rows, block_cols = sharding.block_shape(grid)
    numel = block_rows * block_cols
    part = sharding.depth_slice(grid)
    start, stop = min(part.start, numel), min(part.stop, numel)
    shard = torch.zeros(shard_numel)  # what lies past the block is depth padding, kept at zero
    if stop > start:
        first, last = start // block_cols, (stop - 1) // block_cols + 1  # block rows overlapping the slice
        rows = slice(row_slice.start + first, row_slice.start + last)
        flat = _normal_rows(name, seed, sharding.global_shape, rows, std)[:, col_slice].reshape(-1)
        offset = start - first * block_cols
        shard[: stop - start] = flat[offset: offset + stop - start]
    return shard


def _owner(model, param_name: str):
    return model.get_submodule(param_name.rsplit(".", 1)[0])
