"""A layout: how the world of ranks is factored into the five parallel axes."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

AXES = ("data", "pipe", "depth", "row", "col")
# Outermost first: `col` varies fastest, so col (then row) groups sit inside a node.
DEFAULT_ORDER = ("data", "pipe", "depth", "row", "col")


@dataclass(frozen=True)
class Layout:
    data: int = 1
    pipe: int = 1
    depth: int = 1
    row: int = 1
    col: int = 1
    order: tuple[str, ...] = DEFAULT_ORDER
    # Interleaved 1F1B: each pipeline stage holds this many non-adjacent chunks of the layers.
    # Not an axis: it changes no rank's coordinates, only what a stage holds and its schedule.
    virtual_stages: int = 1

    def __post_init__(self):
        for axis in AXES + ("virtual_stages",):
            size = getattr(self, axis)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"layout.{axis} must be a positive integer, got {size!r}")
        if sorted(self.order) != sorted(AXES):
            raise ValueError(
                f"layout.order must name each of {', '.join(AXES)} once, got {', '.join(self.order)}"
            )

    @property
    def world_size(self) -> int:
        return prod(self.sizes().values())

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in AXES}

    def strides(self) -> dict[str, int]:
        """Rank stride of each axis: rank = sum(coord[a] * stride[a])."""
        strides, step = {}, 1
        for axis in reversed(self.order):
            strides[axis] = step
            step *= getattr(self, axis)
        return strides

    def coords(self, rank: int) -> dict[str, int]:
        strides = self.strides()
        return {axis: (rank // strides[axis]) % getattr(self, axis) for axis in AXES}

    def rank_of(self, coords: dict[str, int]) -> int:
        strides = self.strides()
        return sum(coords[axis] * strides[axis] for axis in AXES)

    def groups(self, axes: tuple[str, ...]) -> list[list[int]]:
        """Every group of ranks that differ only in `axes`, ordered by their first rank.

        Each group is in ascending rank order, which along one axis is coordinate order.
        """
        strides = self.strides()
        offsets = [0]
        for axis in axes:
            offsets = [o + i * strides[axis] for o in offsets for i in range(getattr(self, axis))]
        offsets.sort()
        firsts = [r for r in range(self.world_size)
                  if not any((r // strides[axis]) % getattr(self, axis) for axis in axes)]
        return [[first + o for o in offsets] for first in firsts]

    def __str__(self) -> str:
        sizes = " x ".join(f"{axis} {getattr(self, axis)}" for axis in AXES)
        chunks = f", {self.virtual_stages} virtual stages" if self.virtual_stages > 1 else ""
        return f"{sizes} (order {','.join(self.order)}{chunks})"


def sizes_text(layout: Layout) -> str:
    """The axes larger than 1, e.g. "data=8 depth=16 row=4" (or "1 rank"), and v when interleaved."""
    text = " ".join(f"{axis}={getattr(layout, axis)}" for axis in AXES if getattr(layout, axis) > 1) or "1 rank"
    return text + (f" v={layout.virtual_stages}" if layout.virtual_stages > 1 else "")


def factorizations(world_size: int, axes: tuple[str, ...] = AXES) -> list[Layout]:
    """Every Layout whose sizes over `axes` multiply to world_size (other axes 1)."""

    def split(n: int, k: int):
        if k == 1:
            yield (n,)
            return
        for d in range(1, n + 1):
            if n % d == 0:
                for rest in split(n // d, k - 1):
                    yield (d,) + rest

    return [Layout(**dict(zip(axes, sizes))) for sizes in split(world_size, len(axes))]
