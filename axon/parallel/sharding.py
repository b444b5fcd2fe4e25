"""How one parameter's global tensor is laid out across the grid.

A matrix is cut into a block by the tensor axes (`dim_axes` names the axis that
splits each dimension, or None); a depth-sharded block is then flattened, padded to
a multiple of the depth size and cut into equal 1-D slices, one per depth rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Sharding:
    global_shape: tuple[int, ...]
    dim_axes: tuple[str | None, ...]  # per dimension: "row", "col" or None
    depth_sharded: bool

    def block_shape(self, grid) -> tuple[int, ...]:
        return tuple(n // (grid.size(a) if a else 1) for n, a in zip(self.global_shape, self.dim_axes))

    def block_slices(self, grid) -> tuple[slice, ...]:
        """This rank's block as slices of the global tensor."""
        slices = []
        for n, a in zip(self.global_shape, self.dim_axes):
            if a is None:
                slices.append(slice(0, n))
            else:
                part = n // grid.size(a)
                slices.append(slice(grid.coord(a) * part, (grid.coord(a) + 1) * part))
        return tuple(slices)

    def shard_numel(self, grid) -> int:
        """Elements of this rank's parameter (its depth slice of the block, with padding)."""
        block = prod(self.block_shape(grid))
        if not self.depth_sharded:
            return block
        depth = grid.size("depth")
        return -(-block // depth)

    def depth_slice(self, grid) -> slice:
        """Which elements of the flattened block this rank's shard holds (may run past the end: padding)."""
        n = self.shard_numel(grid)
        start = grid.coord("depth") * n if self.depth_sharded else 0
        return slice(start, start + n)


def named_shardings(model):
    """(name, parameter, Sharding) for every parameter; each parallel module declares one."""
    entries = []
    for module_name, module in model.named_modules():
        sharding = getattr(module, "sharding", None)
        if sharding is not None:
            name = f"{module_name}.weight" if module_name else "weight"
            entries.append((name, module.weight, sharding))
    if len(entries) != len(list(model.parameters())):
        raise TypeError("every parameter must belong to a parallel module that declares its sharding")
    return entries


def shard_from_global(sharding: Sharding, grid, read_region, shard_numel: int):
    """Build this rank's parameter from a reader of the global tensor.

    `read_region(rows, cols)` returns the global tensor's [rows, cols] region as a 2-D
    tensor (a 1-D tensor is seen as one row). Only the rows this rank's depth slice
    touches are asked for, so memory stays at the shard's size plus a partial row at
    each end — never a whole weight. Elements past the block are depth padding (zero).
    """
    import torch

    slices = sharding.block_slices(grid)
    shape = sharding.block_shape(grid)
    if len(shape) == 1:
        slices, shape = (slice(0, 1),) + slices, (1,) + shape
    (row_slice, col_slice), (block_rows, block_cols) = slices, shape
    numel = block_rows * block_cols
    part = sharding.depth_slice(grid)
    start, stop = min(part.start, numel), min(part.stop, numel)
    shard = torch.zeros(shard_numel)
    if stop > start:
        first, last = start // block_cols, (stop - 1) // block_cols + 1  # block rows the slice touches
        rows = slice(row_slice.start + first, row_slice.start + last)
        flat = read_region(rows, col_slice).reshape(-1)
        offset = start - first * block_cols
        shard[: stop - start] = flat[offset: offset + stop - start]
    return shard
