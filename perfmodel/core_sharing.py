"""Ranks that share cores: how much faster a pipeline stage computes while other stages sleep.

Where a node's ranks outnumber its cores (CPU ranks, `oversubscription` f > 1), calibrate
prices compute with every rank computing at once: each runs at 1/f of its solo speed. A rank
in a blocking collective first sleeps until its group's last rank arrives (the profile's
blocking latency beyond the collective's own fit), then works the transfer as hard as a
computing rank does. In a pipeline the stages are out of phase, so another stage's ranks
sleep a fraction z of the time while this stage computes, and leave it their cores.
Processor sharing, mean field:

    demand  = same + other * (1 - z)           ranks' worth of CPU wanted on the node
    speed   = min(1, cores / demand)           of solo, for a computing rank
    compute = priced * (1 / f) / speed         z = sleep / (compute + comm)

solved for its fixed point. One stage per node, or f = 1, leaves the price as it is.
Torch-free: predict imports it.
"""

from __future__ import annotations

from perfmodel.layout import Layout


def stage_mates_on_node(layout: Layout, ranks_per_node: int) -> tuple[int, int]:
    """(ranks of rank 0's pipeline stage, ranks of other stages) among node 0's ranks."""
    ranks = range(min(ranks_per_node, layout.world_size))
    own = layout.coords(0)["pipe"]
    same = sum(layout.coords(r)["pipe"] == own for r in ranks)
    return same, len(ranks) - same


def lent_compute_factor(compute_s: float, comm_s: float, sleep_s: float, same: int, other: int,
                        oversubscription: float) -> float:
    """What a stage's priced compute shrinks to, a factor in [1/f, 1], when `other` ranks of
    other stages on its node sleep `sleep_s` of every `compute_s + comm_s` (stages alike)."""
    f = oversubscription
    if other == 0 or f <= 1 or compute_s <= 0 or sleep_s <= 0:
        return 1.0
    cores = (same + other) / f

    def factor_given(k: float) -> float:
        asleep = min(1.0, sleep_s / (k * compute_s + comm_s))
        return (1 / f) / min(1.0, cores / (same + other * (1 - asleep)))

    # factor_given(k) - k is >= 0 at k = 1/f and <= 0 at k = 1: bisect for the crossing.
    low, high = 1 / f, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if factor_given(mid) > mid else (low, mid)
    return (low + high) / 2
