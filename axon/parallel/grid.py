"""The process grid: world = data x pipe x depth x row x col, and one group per axis.

A `Grid` owns every process group and coordinate of one layout; layers receive it
explicitly, so several grids can live in one process (the tests build many).
Axes of size 1 get no group: their collectives are skipped, not run on one rank.
Which ranks form each group is the layout's rule (Layout.groups); how torch creates
them, one collective per axis where it can, is axon/parallel/groups.py's.
"""

from __future__ import annotations

import torch.distributed as dist

from datetime import timedelta

from axon.parallel.groups import create_groups
from axon.parallel.trace import Axis, CommTrace
from axon.spec.layout import AXES, Layout


# A checkpoint's barriers wait for the slowest writer on a shared file system: their group has
# this timeout, and the watchdog allows them as long (not train.collective_timeout_s).
CHECKPOINT_TIMEOUT_S = 3600.0


class Grid:
    def __init__(self, layout: Layout, rank: int):
        if not 0 <= rank < layout.world_size:
            raise ValueError(f"rank {rank} is outside the layout's world of {layout.world_size}")
        self.layout = layout
        self.rank = rank
        self.coords = layout.coords(rank)
        # Every rank creates the axes' groups in the same order: creating a group is collective.
        self._groups: dict[str, dist.ProcessGroup | None] = {
            axis: None if getattr(layout, axis) == 1 else self._create((axis,)) for axis in AXES}
        self.trace = CommTrace()  # every collective of a step on this rank, when enabled
        self._axes = {axis: Axis(axis, self._groups[axis], self.size(axis), self.trace) for axis in AXES}
        # Replicated weights' gradients are summed over data and depth at once. Where one of the
        # two has size 1 the other axis's group serves; only a true 2-D group is created anew.
        if layout.depth == 1:
            joint = self._groups["data"]
        elif layout.data == 1:
            joint = self._groups["depth"]
        else:
            joint = self._create(("data", "depth"))
        self._axes["data+depth"] = Axis("data+depth", joint, layout.data * layout.depth, self.trace)

    def _create(self, axes: tuple[str, ...], timeout: timedelta | None = None) -> dist.ProcessGroup:
        """Create every group spanning `axes` on every rank; return this rank's."""
        return create_groups(self.layout.groups(axes), self.rank, desc="axon_" + "+".join(axes), timeout=timeout)

    def size(self, axis: str) -> int:
        return getattr(self.layout, axis)

    def coord(self, axis: str) -> int:
        return self.coords[axis]

    def group(self, axis: str) -> dist.ProcessGroup | None:
        """This rank's group along `axis`, or None when the axis has size 1."""
        return self._groups[axis]

    def axis(self, axis: str) -> Axis:
        """The axis as layers use it: its group plus the trace its collectives go into.
        Besides the five layout axes there is "data+depth", both at once, and "checkpoint", the
        whole world with CHECKPOINT_TIMEOUT_S (created at the first save: collective)."""
        if axis == "checkpoint" and axis not in self._axes:
            world = self.layout.world_size
            group = None if world == 1 else self._create(AXES, timedelta(seconds=CHECKPOINT_TIMEOUT_S))
            self._axes[axis] = Axis(axis, group, world, self.trace, allowed_wait_s=CHECKPOINT_TIMEOUT_S)
        return self._axes[axis]

    def destroy(self) -> None:
        groups = {id(a.group): a.group for a in self._axes.values() if a.group is not None}
        for group in groups.values():
            dist.destroy_process_group(group)
        self._groups = dict.fromkeys(self._groups)

    def __repr__(self) -> str:
        where = ", ".join(f"{axis}={self.coords[axis]}" for axis in AXES)
        return f"Grid(rank {self.rank}: {where}; {self.layout})"
