"""A grid's coordinates without process groups: what batching and building a rank's shards read
of a grid, for tests that play every rank of a layout in one process."""

from __future__ import annotations

from axon.parallel.trace import Axis, CommTrace


class CoordinateGrid:
    def __init__(self, layout, rank: int):
        self.layout, self.coords = layout, layout.coords(rank)

    def size(self, axis: str) -> int:
        return getattr(self.layout, axis)

    def coord(self, axis: str) -> int:
        return self.coords[axis]

    def group(self, axis: str):
        return None

    def axis(self, axis: str) -> Axis:
        return Axis(axis, None, self.size(axis), CommTrace())
