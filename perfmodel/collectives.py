"""The time of one collective: alpha-beta over the link its group actually crosses.

Ring algebra for a group of p ranks and a full buffer of n bytes (DESIGN §7):
    all-reduce                    2(p-1) a + 2(p-1)/p * n / B
    all-gather, reduce-scatter     (p-1) a +  (p-1)/p * n / B
and, where the profile's library has it (NCCL, RCCL: `tree_all_reduce`), an all-reduce takes
the faster of that ring and a double binary tree, 2 ceil(log2 p) a + 2 n / B: at thousands of
ranks a small all-reduce pays microseconds, not the ring's milliseconds.
Where a profile holds a measured fit for the op, placement and group size, the fit wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from axon.spec.layout import Layout
from perfmodel.machine import Machine

# Per op: how many ring passes (all-reduce = reduce-scatter then all-gather; DESIGN §7's ring algebra
# above; a send is one transfer, priced apart in collective_time).
RING_PASSES = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1, "send": 0}


# The groups a step's collectives run over (perfmodel.workload): each axis, and data x depth
# for the loss and the norm gains. A rank order changes a prediction only through these.
PRICED_GROUPS = (("data",), ("pipe",), ("depth",), ("row",), ("col",), ("data", "depth"))


@dataclass(frozen=True)
class Placement:
    """Where one axis's groups sit for a layout's rank order on a machine."""

    size: int
    intra: bool  # every group lies inside one node
    bandwidth_gbs: float  # per-rank one-way bandwidth each ring step gets
    latency_us: float
    nic_streams: int = 0  # ring streams leaving the busiest node at once (0: no group leaves its node)
    group_streams: int = 0  # rings leaving the busiest dragonfly group at once (0: none, or not priced)


def group_placement(layout: Layout, axes: tuple[str, ...], machine: Machine) -> Placement:
    """Placement of the groups spanning `axes` (ranks that differ only there), all of them.

    Every group runs the collective at once. A group over k > 1 nodes sends one ring stream
    out of each node it touches, so a node's NICs are shared by the streams of every such
    group touching it; the busiest node sets the pace of the slowest group, hence of the step.
    Where the profile describes a dragonfly, the rings leaving one group of nodes likewise
    share that group's bandwidth to the other groups.
    """
    size = 1
    for axis in axes:
        size *= getattr(layout, axis)
    if size == 1:
        return Placement(1, True, float("inf"), 0.0)
    strides = layout.strides()
    members = tuple(sorted((getattr(layout, a), strides[a]) for a in axes if getattr(layout, a) > 1))
    streams = busiest_node_streams(members, layout.world_size, machine.devices_per_node)
    if streams == 0:
        return Placement(size, True, machine.intra_node.bandwidth_gbs, machine.intra_node.latency_us)
    nic_share = machine.nics_per_node * machine.inter_node.bandwidth_gbs / streams
    bandwidth = min(machine.intra_node.bandwidth_gbs, nic_share)
    # On a dragonfly, the rings that leave a group of nodes share that group's links to the
    # others: the busiest group sets the pace, as the busiest node does for its NICs.
    rings_out = 0
    if machine.dragonfly_group_nodes and machine.dragonfly_group_egress_gbs:
        rings_out = busiest_node_streams(members, layout.world_size,
                                         machine.dragonfly_group_nodes * machine.devices_per_node)
        if rings_out:
            bandwidth = min(bandwidth, machine.dragonfly_group_egress_gbs / rings_out)
    return Placement(size, False, bandwidth, machine.inter_node.latency_us, streams, rings_out)


@lru_cache(maxsize=1 << 16)  # a plan asks for the same few geometries for thousands of layouts
def busiest_node_streams(members: tuple[tuple[int, int], ...], world: int, per_node: int) -> int:
    """Most groups leaving one node that touch it, over all nodes (0 if every group is inside one).

    `members`: (size, stride) of each axis of the group. Groups live inside blocks of
    `span` = the outermost axis's size x stride ranks, nodes are `per_node` ranks, so the
    pattern repeats every lcm(span, per_node) ranks: only that window is counted (any
    leftover tail of the world is a prefix of it, so it has no busier node).
    """
    span = max(size * stride for size, stride in members)
    last_member = sum((size - 1) * stride for size, stride in members)  # the last rank's offset in its group
    window = min(math.lcm(span, per_node), world)
    nodes = -(-window // per_node)
    ranks = np.arange(nodes * per_node)
    group = ranks.copy()  # each rank's group, named by its first rank
    for size, stride in members:
        group -= (ranks // stride) % size * stride
    # A group's ranks lie between its first and last, so it leaves its node iff those two differ.
    leaves = (group // per_node != (group + last_member) // per_node) & (ranks < window)
    if not leaves.any():
        return 0
    # Per node (a row), the distinct groups that leave: sort the row, count the changes.
    rows = np.sort(np.where(leaves, group, -1).reshape(nodes, per_node), axis=1)
    starts = (rows[:, 1:] != rows[:, :-1]) & (rows[:, 1:] >= 0)
    return int((starts.sum(axis=1) + (rows[:, 0] >= 0)).max())


def collective_time(op: str, nbytes: float, placement: Placement, machine: Machine, blocking: bool = False) -> float:
    """Seconds for one collective of `nbytes` (full buffer) over groups placed as given.
    `blocking`: it stands between two pieces of compute, so it pays at least the profile's
    blocking latency (ranks reach it at different moments)."""
    p = placement.size
    if p == 1 or nbytes <= 0:
        return 0.0
    if op == "send":  # a point-to-point transfer between neighbouring pipeline stages
        transfer = placement.latency_us * 1e-6 + nbytes / (placement.bandwidth_gbs * 1e9)
        # Priced blocking, a rendezvous of two ranks whatever the number of stages: since issue 32
        # the engine waits for a received tensor only before the op that reads it, so compute can
        # hide part of this; the model does not count that overlap (an upper bound on the cost).
        return max(_blocking_latency(replace(placement, size=2), machine), transfer) if blocking else transfer
    if blocking:
        floor = _blocking_latency(placement, machine)
        if floor:
            return max(floor, collective_time(op, nbytes, placement, machine))
    fit = _measured_fit(op, placement, machine)
    if fit is not None:
        alpha, bandwidth, measured_p = fit
        # Scale a fit measured at another group size by the ring algebra.
        alpha *= (p - 1) / (measured_p - 1)
        bandwidth *= ((measured_p - 1) / measured_p) / ((p - 1) / p)
        return alpha + nbytes / bandwidth
    passes = RING_PASSES[op]
    alpha = passes * (p - 1) * placement.latency_us * 1e-6
    ring = alpha + passes * (p - 1) / p * nbytes / (placement.bandwidth_gbs * 1e9)
    if op == "all_reduce" and machine.tree_all_reduce:
        # NCCL/RCCL pick the faster of ring and double binary tree per size: the tree's latency
        # grows with log2(p), not p, at the cost of the ring's (p-1)/p bandwidth saving.
        tree = 2 * math.ceil(math.log2(p)) * placement.latency_us * 1e-6 + 2 * nbytes / (placement.bandwidth_gbs * 1e9)
        return min(ring, tree)
    return ring


def _blocking_latency(placement: Placement, machine: Machine) -> float:
    """Seconds, from the measurement at the nearest group size scaled by (p - 1); 0 if none."""
    by_size = machine.blocking_latency_us.get("intra" if placement.intra else "inter", {})
    if not by_size:
        return 0.0
    nearest = min(by_size, key=lambda s: (abs(s - placement.size), -s))
    return by_size[nearest] * 1e-6 * (placement.size - 1) / (nearest - 1)


def _measured_fit(op: str, placement: Placement, machine: Machine):
    by_size = machine.collectives.get(op, {}).get("intra" if placement.intra else "inter", {})
    if not by_size:
        return None
    nearest = min(by_size, key=lambda s: (abs(s - placement.size), -s))
    fit = by_size[nearest]
    return fit.alpha_us * 1e-6, fit.bandwidth_gbs * 1e9, nearest
