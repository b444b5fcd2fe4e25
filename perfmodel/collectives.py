"""The time of one collective: alpha-beta over the link its group actually crosses.

Ring algebra for a group of p ranks and a full buffer of n bytes (DESIGN §7):
    all-reduce                    2(p-1) a + 2(p-1)/p * n / B
    all-gather, reduce-scatter     (p-1) a +  (p-1)/p * n / B
Where a profile holds a measured fit for the op, placement and group size, the fit wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfmodel.layout import Layout
from perfmodel.machine import Machine

# Per op: how many ring passes (all-reduce = reduce-scatter then all-gather).
RING_PASSES = {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1, "send": 0}


@dataclass(frozen=True)
class Placement:
    """Where one axis's groups sit for a layout's rank order on a machine."""

    size: int
    intra: bool  # every group lies inside one node
    bandwidth_gbs: float  # per-rank one-way bandwidth each ring step gets
    latency_us: float


def group_placement(layout: Layout, axes: tuple[str, ...], machine: Machine) -> Placement:
    """Placement of the groups spanning `axes` (ranks that differ only there).

    A group that spans k nodes with p/k members on each: every node it touches hosts
    devices_per_node / (p/k) such groups at once, and each sends one ring stream out of
    the node, so the node's NICs are shared by that many streams.
    """
    size = 1
    for axis in axes:
        size *= getattr(layout, axis)
    if size == 1:
        return Placement(1, True, float("inf"), 0.0)
    strides = layout.strides()
    offsets = [0]
    for axis in axes:
        offsets = [o + i * strides[axis] for o in offsets for i in range(getattr(layout, axis))]
    per_node = machine.devices_per_node
    nodes = {rank // per_node for rank in offsets}  # rank 0's group; the others are alike
    if len(nodes) == 1:
        return Placement(size, True, machine.intra_node.bandwidth_gbs, machine.intra_node.latency_us)
    members_per_node = max(1, size // len(nodes))
    streams_out = max(1, per_node // members_per_node)
    nic_share = machine.nics_per_node * machine.inter_node.bandwidth_gbs / streams_out
    return Placement(size, False, min(machine.intra_node.bandwidth_gbs, nic_share), machine.inter_node.latency_us)


def collective_time(op: str, nbytes: float, placement: Placement, machine: Machine, blocking: bool = False) -> float:
    """Seconds for one collective of `nbytes` (full buffer) over groups placed as given.
    `blocking`: it stands between two pieces of compute, so it pays at least the profile's
    blocking latency (ranks reach it at different moments)."""
    p = placement.size
    if p == 1 or nbytes <= 0:
        return 0.0
    if blocking:
        floor = _blocking_latency(placement, machine)
        if floor:
            return max(floor, collective_time(op, nbytes, placement, machine))
    if op == "send":  # a point-to-point transfer between neighbouring pipeline stages
        return placement.latency_us * 1e-6 + nbytes / (placement.bandwidth_gbs * 1e9)
    fit = _measured_fit(op, placement, machine)
    if fit is not None:
        alpha, bandwidth, measured_p = fit
        # Scale a fit measured at another group size by the ring algebra.
        alpha *= (p - 1) / (measured_p - 1)
        bandwidth *= ((measured_p - 1) / measured_p) / ((p - 1) / p)
        return alpha + nbytes / bandwidth
    passes = RING_PASSES[op]
    alpha = passes * (p - 1) * placement.latency_us * 1e-6
    return alpha + passes * (p - 1) / p * nbytes / (placement.bandwidth_gbs * 1e9)


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
