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

The pipeline's own waits (a stage waiting for its neighbour's activations or gradients, in
the warm-up, the drain, or behind a slower stage) are replayed event by event instead
(`shared_core_replay`): the node's cores go to the ranks busy at each moment. Measured on
this 2-core machine (commit e981624, which added the replay), 8 ranks of data=2 x pipe=4 kept
both cores busy (2.01 core-seconds in a 1.03 s step) while the first stage's ranks computed 40%
of it, so the step follows the work over the cores, not the slowest stage's price.
Torch-free: predict imports it.
"""

from __future__ import annotations

from functools import lru_cache

from axon.spec.layout import Layout


def stage_mates_on_node(layout: Layout, ranks_per_node: int) -> tuple[int, int]:
    """(ranks of rank 0's pipeline stage, ranks of other stages) among node 0's ranks."""
    own = stage_mix_by_node(layout, ranks_per_node)[0]
    return own[0], sum(own) - own[0]


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

    # factor_given(k) - k is >= 0 at k = 1/f and <= 0 at k = 1: bisect for the crossing. 50 halvings
    # leave an interval under 2^-50 of [1/f, 1], a few float64 ulps: the fixed point to rounding.
    low, high = 1 / f, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if factor_given(mid) > mid else (low, mid)
    return (low + high) / 2


@lru_cache(maxsize=1024)  # predict asks for rank 0's row (lending) and every row (the replay)
def stage_mix_by_node(layout: Layout, ranks_per_node: int) -> tuple[tuple[int, ...], ...]:
    """mix[s][t]: ranks of stage t on the node of stage s's first rank (stages' replicas run
    in step, so one node per stage stands for all of its nodes)."""
    mix = []
    for s in range(layout.pipe):
        first = layout.rank_of({**dict.fromkeys(("data", "depth", "row", "col"), 0), "pipe": s})
        start = first - first % ranks_per_node
        counts = [0] * layout.pipe
        for rank in range(start, min(start + ranks_per_node, layout.world_size)):
            counts[layout.coords(rank)["pipe"]] += 1
        mix.append(tuple(counts))
    return tuple(mix)


def shared_core_replay(orders, forward_s, backward_s, mix, oversubscription: float) -> float:
    """The step of a plain 1F1B schedule whose stages share cores: processor sharing, replayed
    event by event.

    orders[s]: stage s's ("F" | "B", micro-batch) order; forward_s, backward_s: each stage's
    times as priced, with every rank of the node computing (speed 1/f of solo). At any moment
    a stage's ranks compute at min(f, N / D) times that price, N the ranks of its node and D
    those of them busy (mix counts them by stage): a stage waiting for its neighbour lends its
    cores to the busy ones, and no rank runs faster than solo. With f = 1 it is the plain replay."""
    p, f = len(orders), oversubscription
    ranks = [sum(row) for row in mix]
    done_f, done_b = set(), set()  # (stage, micro-batch) of finished forwards and backwards
    position, left = [0] * p, [None] * p  # per stage: next op, work left of the op it runs (None: waiting)
    clock = 0.0

    def start_ready() -> None:
        for s in range(p):
            if left[s] is None and position[s] < len(orders[s]):
                kind, j = orders[s][position[s]]
                if kind == "F":  # the activations from the stage before; the last stage's
                    ready = s == 0 or (s - 1, j) in done_f  # backward follows its own forward
                else:
                    ready = (s, j) in done_f if s == p - 1 else (s + 1, j) in done_b
                if ready:
                    left[s] = forward_s[s] if kind == "F" else backward_s[s]

    start_ready()
    while any(op is not None for op in left):
        busy = [s for s in range(p) if left[s] is not None]
        rate = {s: min(f, ranks[s] / sum(mix[s][t] for t in busy)) for s in busy}
        step = min(left[s] / rate[s] for s in busy)
        clock += step
        for s in busy:
            left[s] -= rate[s] * step
            # Done up to rounding: a relative 1e-12 of the stage's work (~4,500 float64 ulps of 2.2e-16)
            # absorbs the rounding of the subtractions made while the op runs, far below any time that matters.
            if left[s] <= 1e-12 * (forward_s[s] + backward_s[s]):
                kind, j = orders[s][position[s]]
                (done_f if kind == "F" else done_b).add((s, j))
                position[s], left[s] = position[s] + 1, None
        start_ready()
    if any(position[s] < len(orders[s]) for s in range(p)):
        raise RuntimeError("1F1B schedule deadlocked")  # cannot happen for pipeline_order's orders
    return clock
