"""The process grid: world = data x pipe x depth x row x col, and one group per axis.

A `Grid` owns every process group and coordinate of one layout; layers receive it
explicitly, so several grids can live in one process (the tests build many).
Axes of size 1 get no group: their collectives are skipped, not run on one rank.
"""

from __future__ import annotations

import torch.distributed as dist

from axon.parallel.trace import Axis, CommTrace
from perfmodel.layout import AXES, Layout


class Grid:
    def __init__(self, layout: Layout, rank: int):
        if not 0 <= rank < layout.world_size:
            raise ValueError(f"rank {rank} is outside the layout's world of {layout.world_size}")
        self.layout = layout
        self.rank = rank
        self.coords = layout.coords(rank)
        self._groups: dict[str, dist.ProcessGroup | None] = {}
        for axis in AXES:
            self._groups[axis] = self._build_axis_groups(axis)
        self.trace = CommTrace()  # every collective of a step on this rank, when enabled
        self._axes = {axis: Axis(axis, self._groups[axis], self.size(axis), self.trace) for axis in AXES}
        # Replicated weights' gradients are summed over data and depth at once. Where one of the
        # two has size 1 the other axis's group serves; only a true 2-D group is created anew.
        if layout.depth == 1:
            joint = self._groups["data"]
        elif layout.data == 1:
            joint = self._groups["depth"]
        else:
            joint = self._build_groups(("data", "depth"))
        self._axes["data+depth"] = Axis("data+depth", joint, layout.data * layout.depth, self.trace)

    def _build_axis_groups(self, axis: str) -> dist.ProcessGroup | None:
        return None if getattr(self.layout, axis) == 1 else self._build_groups((axis,))

    def _build_groups(self, axes: tuple[str, ...]) -> dist.ProcessGroup:
        """Create every group spanning `axes` (ranks that differ only there); return this rank's.

        Every rank must call new_group for every group in the same order; ranks
        outside a group return at once and no barrier runs, so this stays O(world)
        cheap Python even at 32,768 ranks.
        """
        strides = self.layout.strides()
        offsets = [0]
        for axis in axes:
            offsets = [o + i * strides[axis] for o in offsets for i in range(getattr(self.layout, axis))]
        mine = None
        for base in range(self.layout.world_size):
            if any((base // strides[axis]) % getattr(self.layout, axis) for axis in axes):
                continue  # not the first rank of its group
            ranks = sorted(base + o for o in offsets)
            group = dist.new_group(ranks)
            if self.rank in ranks:
                mine = group
        return mine

    def size(self, axis: str) -> int:
        return getattr(self.layout, axis)

    def coord(self, axis: str) -> int:
        return self.coords[axis]

    def group(self, axis: str) -> dist.ProcessGroup | None:
        """This rank's group along `axis`, or None when the axis has size 1."""
        return self._groups[axis]

    def axis(self, axis: str) -> Axis:
        """The axis as layers use it: its group plus the trace its collectives go into.
        Besides the five layout axes there is "data+depth", both at once."""
        return self._axes[axis]

    def destroy(self) -> None:
        groups = {id(a.group): a.group for a in self._axes.values() if a.group is not None}
        for group in groups.values():
            dist.destroy_process_group(group)
        self._groups = dict.fromkeys(self._groups)

    def __repr__(self) -> str:
        where = ", ".join(f"{axis}={self.coords[axis]}" for axis in AXES)
        return f"Grid(rank {self.rank}: {where}; {self.layout})"
