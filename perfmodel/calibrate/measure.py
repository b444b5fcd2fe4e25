"""The measurements behind `perfmodel calibrate`: GEMMs, memory, op overhead, collectives, overlap.

Every function here runs on all ranks at once (that is how training shares a node) and
returns the slowest rank's timing, so every rank fits the same numbers. torch is imported
inside functions only.
"""

from __future__ import annotations

import math
import statistics
import time

from perfmodel.machine import COLLECTIVE_OPS

KIB, MIB = 1 << 10, 1 << 20

class Bench:
    """Timings all ranks take together; each one comes back as the slowest rank's."""

    def __init__(self, device, world: int, quick: bool):
        self.device, self.world = device, world
        self.cuda = device.type == "cuda"
        self.repeats = 3 if quick else 5
        self.target_s = 0.02 if quick else 0.05  # per repeat of a collective: long enough for a stable clock
        # A local op's window: many scheduler slices, so ranks sharing a core all get their share.
        self.window_s = 0.1 if quick else 0.25

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier(device_ids=[self.device.index]) if self.cuda else dist.barrier()
        self.sync()

    def across_ranks(self, values: list[float], largest: bool = True) -> list[float]:
        """Each value's max (or min) over the ranks, so every rank decides alike."""
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return list(values)
        sign = 1.0 if largest else -1.0
        t = torch.tensor([sign * v for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [sign * v for v in t.tolist()]

    def _run(self, fn, calls: int, window_s: float = 0.0) -> float:
        """Seconds per call: `calls` calls, repeated until window_s has passed."""
        self.barrier()
        start, done = time.perf_counter(), 0
        while done == 0 or time.perf_counter() - start < window_s:
            for _ in range(calls):
                fn()
            self.sync()
            done += calls
        return (time.perf_counter() - start) / done

    def _plan(self, fn, local: bool, target_s: float | None, window_s: float | None) -> tuple[int, float]:
        """(calls, window) for one repeat of fn, after a warm-up call and a timed pilot.

        A collective runs a fixed number of calls, the same on every rank, about `target_s`
        (default the bench's) per repeat. A local op (`local`) runs for a fixed time instead,
        `window_s` (default the bench's), so every rank is busy for the whole window: on a CPU
        the ranks share cores, and a rank finishing early would hand its core to the others."""
        fn()  # warm-up: allocation, communicator set-up, caches
        pilot = self.across_ranks([self._run(fn, 1)])[0]
        target = self.target_s if target_s is None else target_s
        calls = max(1, min(1000, round(target / max(pilot, 1e-9) / (10 if local else 1))))
        return calls, ((self.window_s if window_s is None else window_s) if local else 0.0)

    def seconds(self, fn, local: bool = False, target_s: float | None = None, window_s: float | None = None) -> float:
        """Seconds per call of fn(): median over repeats of the slowest rank. Call on every rank."""
        calls, window = self._plan(fn, local, target_s, window_s)
        return statistics.median(self.across_ranks([self._run(fn, calls, window) for _ in range(self.repeats)]))

    def interleaved(self, fns: list[tuple], rounds: int, target_s: float | None = None) -> list[list[float]]:
        """Seconds per call of each (fn, local) pair, timed one after another in each of `rounds`
        rounds; one row per round, each the slowest rank's. For a figure computed from several
        timings: a drift in the machine's load then moves all of a round's timings alike."""
        plans = [self._plan(fn, local, target_s, None) for fn, local in fns]
        rows = [[self._run(fn, calls, window) for (fn, _), (calls, window) in zip(fns, plans)] for _ in range(rounds)]
        flat = self.across_ranks([t for row in rows for t in row])
        return [flat[i * len(fns):(i + 1) * len(fns)] for i in range(rounds)]


# ---------------------------------------------------------------- compute and memory

def gemm_shapes(cuda: bool, quick: bool) -> list[tuple[int, int, int]]:
    """(m, n, k): squares, and skinny [tokens, hidden] x [hidden, ffn] ones (m tokens, k hidden,
    n ffn); ~1e5 to 1e10 FLOPs on a CPU, ~1e8 to 1e13 on a GPU."""
    if cuda:
        squares, skinny = [384, 1024, 2048, 4096, 8192, 16384], [(512, 8192, 2048), (2048, 4096, 1024), (8192, 16384, 4096)]
        if quick:
            squares, skinny = [384, 2048, 8192], skinny[1:]
    else:
        squares, skinny = [32, 64, 128, 256, 512, 1024, 1728], [(16, 4096, 1024), (128, 1024, 256), (2048, 2048, 512)]
        if quick:
            squares, skinny = [32, 128, 512, 1024], skinny[1:2] + [(512, 2048, 512)]
    return [(s, s, s) for s in squares] + skinny


def measure_gemms(bench: Bench, dtype_name: str, quick: bool) -> list[tuple[tuple[int, int, int], float]]:
    """(shape, seconds) per GEMM shape."""
    import torch

    dtype = getattr(torch, dtype_name)
    results = []
    for m, n, k in gemm_shapes(bench.cuda, quick):
        a, b = torch.randn(m, k, device=bench.device, dtype=dtype), torch.randn(k, n, device=bench.device, dtype=dtype)
        out = torch.empty(m, n, device=bench.device, dtype=dtype)
        results.append(((m, n, k), bench.seconds(lambda: torch.matmul(a, b, out=out), local=True)))
    return results


def efficiency_curve(results, peak_flops: float) -> list[tuple[float, float]]:
    """[flops, achieved / peak] points, one per half-decade of FLOPs (medians: shapes of a
    like size scatter, and the model interpolates between neighbours)."""
    buckets: dict[int, list[tuple[float, float]]] = {}
    for (m, n, k), seconds in results:
        flops = 2.0 * m * n * k
        buckets.setdefault(round(2 * math.log10(flops)), []).append((flops, min(1.0, flops / seconds / peak_flops)))
    return [(statistics.median(f for f, _ in pts), statistics.median(e for _, e in pts)) for _, pts in sorted(buckets.items())]


def memory_bandwidth_gbs(bench: Bench) -> float:
    import torch

    n = (1 << 28) if bench.cuda else (1 << 24)  # float32: 1 GiB per tensor on a GPU, 64 MiB on a CPU
    x, y = torch.zeros(n, device=bench.device), torch.zeros(n, device=bench.device)
    return 3 * 4 * n / bench.seconds(lambda: y.add_(x), local=True) / 1e9  # reads x and y, writes y


def bare_op_us(bench: Bench) -> float:
    """Microseconds of a bare op (a no-grad add of one element): the link latency a profile
    without collectives stands in with. A training step's ops cost more: see
    `reference.measure_op_overhead_us`."""
    import torch

    a, b = torch.ones(1, device=bench.device), torch.ones(1, device=bench.device)

    def thousand_ops():
        for _ in range(1000):
            a.add(b)

    return bench.seconds(thousand_ops, local=True) / 1000 * 1e6


# ---------------------------------------------------------------- collectives

def partitions(hosts: list[str]) -> dict[tuple[str, int], list[list[int]]]:
    """(placement, group size) -> the groups measured together: consecutive ranks for every
    size dividing the world; across nodes also one rank per node (how data-parallel axes
    cross nodes), which wins where both give the same placement and size."""
    world, found = len(hosts), {}
    for p in (p for p in range(2, world + 1) if world % p == 0):
        groups = [list(range(s, s + p)) for s in range(0, world, p)]
        found[(_placement(hosts, groups), p)] = groups
    nodes = list(dict.fromkeys(hosts))
    per_node = [[r for r in range(world) if hosts[r] == h] for h in nodes]
    if len(nodes) > 1 and len({len(ranks) for ranks in per_node}) == 1:  # strided needs equal nodes
        for p in (p for p in range(2, len(nodes) + 1) if len(nodes) % p == 0):
            found[("inter", p)] = [[per_node[b + j][local] for j in range(p)]
                                   for b in range(0, len(nodes), p) for local in range(len(per_node[0]))]
    return found


def _placement(hosts: list[str], groups: list[list[int]]) -> str:
    return "intra" if all(len({hosts[r] for r in g}) == 1 for g in groups) else "inter"


def my_group(groups: list[list[int]], rank: int, world: int):
    """The group of the partition `groups` that holds `rank`; call on every rank. The world group
    when it is the only one, else every group at once, as the engine makes a grid axis's: one
    world-wide split where the backend splits the world, never one per group (DESIGN §10).
    Undo with `release_group`."""
    import torch.distributed as dist

    from axon.parallel.groups import create_groups

    if len(groups) == 1 and len(groups[0]) == world:
        return dist.group.WORLD
    return create_groups(groups, rank, desc=f"perfmodel_calibrate_{len(groups[0])}")


def release_group(group) -> None:
    """Destroy a group my_group created (the world group stays); every member calls it."""
    import torch.distributed as dist

    if group is not None and group is not dist.group.WORLD:
        dist.destroy_process_group(group)


def message_sizes(p: int, quick: bool, cuda: bool) -> list[int]:
    """Full-buffer bytes, a multiple of 4p (float32, split p ways); the 8-byte one pins alpha."""
    sizes = [8, 4 * KIB, 64 * KIB, MIB, 16 * MIB] if quick else [8] + [4 ** i * KIB for i in range(1, 8)]  # to 16 MiB
    sizes += [256 * MIB] if cuda else []  # NCCL reaches its bus bandwidth only there
    return [math.ceil(s / (4 * p)) * 4 * p for s in sizes]


def collective_call(op: str, nbytes: int, p: int, group, device):
    import torch
    import torch.distributed as dist

    full, part = torch.zeros(nbytes // 4, device=device), torch.zeros(nbytes // 4 // p, device=device)
    # torch 2.13 renamed the *_tensor forms; clusters may run an older torch.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return {"all_reduce": lambda: dist.all_reduce(full, group=group),
            "all_gather": lambda: gather(full, part, group=group),
            "reduce_scatter": lambda: scatter(part, full, group=group)}[op]


def fit_alpha_beta(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(alpha seconds, bytes per second) of t = alpha + bytes / bw over (bytes, seconds) points,
    with alpha >= 0 and bw > 0. Least squares on the relative error (weights 1/t^2), so the
    latency-bound small messages count as much as the bandwidth-bound large ones."""
    w = [1 / t ** 2 for _, t in points]
    sw, sx, sxx = sum(w), sum(wi * x for wi, (x, _) in zip(w, points)), sum(wi * x * x for wi, (x, _) in zip(w, points))
    st, sxt = sum(wi * t for wi, (_, t) in zip(w, points)), sum(wi * x * t for wi, (x, t) in zip(w, points))
    det = sw * sxx - sx * sx
    alpha, slope = (sxx * st - sx * sxt) / det, (sw * sxt - sx * st) / det
    if alpha < 0:  # the best fit through alpha = 0
        alpha, slope = 0.0, sxt / sxx
    if slope <= 0:  # time does not grow with bytes: latency only, bandwidth bounded by the largest
        alpha = min(t for _, t in points)
        x_max, t_max = max(points)
        slope = max(t_max - alpha, 0.01 * t_max) / x_max
    return alpha, 1 / slope


def measure_collectives(bench: Bench, parts: dict, rank: int, quick: bool):
    """{op: {placement: {size: (alpha s, bytes/s)}}}, {("intra", largest p): this rank's group}
    (none without an intra-node partition) for overlap_efficiency, which destroys it, and the
    raw points (with ("in_context", placement, size): the latency_between_compute seconds).
    Every other partition's groups are destroyed once measured: none outlives the calibration."""
    intra = [key for key in parts if key[0] == "intra"]
    keep = max(intra, key=lambda key: key[1]) if intra else None
    fits, groups, raw = {}, {}, {}
    for (place, p), members in parts.items():
        group = my_group(members, rank, bench.world)
        for op in COLLECTIVE_OPS:
            points = [(n, bench.seconds(collective_call(op, n, p, group, bench.device)))
                      for n in message_sizes(p, quick, bench.cuda)]
            raw[(op, place, p)] = points
            fits.setdefault(op, {}).setdefault(place, {})[p] = fit_alpha_beta(points)
        # A step's blocking all-reduces sit between bursts of compute, which can cost more
        # latency than back-to-back calls show: measured apart, priced apart.
        raw[("in_context", place, p)] = latency_between_compute(bench, group, p)
        if (place, p) == keep:
            groups[keep] = group
        else:
            release_group(group)
    return fits, groups, raw


def latency_between_compute(bench: Bench, group, p: int) -> float:
    """Seconds a small all-reduce adds between bursts of GEMMs. Ranks reach it at different
    moments (on a shared CPU, after the scheduler has moved on), which back-to-back timing
    of the collective alone never sees."""
    import torch
    import torch.distributed as dist

    a, b = torch.randn(256, 256, device=bench.device), torch.randn(256, 256, device=bench.device)
    buf = torch.zeros(64 * p, device=bench.device)  # 256 bytes per rank: latency only

    def compute():
        for _ in range(4):
            torch.matmul(a, b)

    def compute_then_all_reduce():
        compute()
        dist.all_reduce(buf, group=group)

    # Tens of calls per timing: a handful right after a barrier, when every rank starts at once,
    # read 20-35% high on 8 ranks sharing 2 cores. The median of paired rounds' differences, as
    # for the overlap: the two timings drift together.
    rows = bench.interleaved([(compute_then_all_reduce, False), (compute, False)], bench.repeats + 2,
                             target_s=bench.target_s * 5)
    return max(0.0, statistics.median(both - alone for both, alone in rows))


def overlap_efficiency(bench: Bench, group, p: int, fit, gemms, dtype_name: str, quick: bool) -> tuple[float, tuple]:
    """Share of an all-reduce that a GEMM of about its length hides: (t_c + t_m - t_b) / min(t_c, t_m),
    with t_c the GEMMs alone, t_m the all-reduce alone, t_b both (the all-reduce async).
    Destroys `group` afterwards (the one measure_collectives kept for it; never the world group)."""
    import torch
    import torch.distributed as dist

    target = (0.005 if quick else 0.02) if bench.cuda else (0.03 if quick else 0.1)
    alpha, bw = fit
    nbytes = math.ceil(min(max((target - alpha) * bw, MIB), 256 * MIB) / (4 * p)) * 4 * p
    buf = torch.zeros(nbytes // 4, device=bench.device)

    def all_reduce():
        dist.all_reduce(buf, group=group)

    t_m = bench.seconds(all_reduce)  # sizes the GEMM burst
    fitting = [(s, t) for s, t in gemms if t <= t_m] or [min(gemms, key=lambda r: r[1])]
    (m, n, k), t_one = max(fitting, key=lambda r: r[1])
    reps = max(1, round(t_m / t_one))
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(m, k, device=bench.device, dtype=dtype), torch.randn(k, n, device=bench.device, dtype=dtype)
    out = torch.empty(m, n, device=bench.device, dtype=dtype)

    def compute():
        for _ in range(reps):
            torch.matmul(a, b, out=out)

    def both():
        work = dist.all_reduce(buf, group=group, async_op=True)
        compute()
        work.wait()

    # The median of paired rounds' efficiencies: the figure is a small difference of three
    # timings. At 8 CPU ranks one round's reading scatters by +-0.13 about zero, and three
    # medians taken apart read 0.00-0.19 in calibrations an hour apart.
    rows = bench.interleaved([(compute, True), (all_reduce, False), (both, False)], 5 if quick else 15)
    release_group(group)
    efficiency = statistics.median(min(1.0, max(0.0, (t_c + t_m - t_b) / min(t_c, t_m))) for t_c, t_m, t_b in rows)
    return efficiency, (nbytes, *(statistics.median(column) for column in zip(*rows)))
