"""`python -m perfmodel calibrate`: measure this allocation and write a machine profile.

Run it under the launcher training uses (torchrun, srun, mpiexec). Every rank measures at
the same time, as in a training step, so shared cores, memory and links show the contention
they really have. Each timing is taken after a warm-up and a barrier, is the slowest rank's
(a step waits for the last rank) and the median of repeats, so every rank holds the same
numbers and fits the same profile; rank 0 prints a table and writes the YAML that
`perfmodel.machine.load_machine` reads. torch is imported inside functions only: the rest of
perfmodel runs on a login node without it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import statistics
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import yaml

from perfmodel.machine import COLLECTIVE_OPS, CollectiveFit, Link, Machine, ProfileError, load_machine, machine_to_dict

KIB, MIB = 1 << 10, 1 << 20
GIB = 1 << 30  # memory_gb is in GiB, as perfmodel.memory counts it; bandwidths use GB = 1e9

# (launcher, rank, world, local rank, local world) variables; the first whose rank and world
# are both set wins. torchrun comes first: inside an allocation it also sees SLURM_*.
LAUNCH_VARS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
    ("mpiexec", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpiexec", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


def launch_from_env(env=os.environ) -> tuple[str, int, int, int, int]:
    """(launcher, rank, world, local rank, local world) from what the launcher exported."""
    for launcher, rank_var, world_var, local_var, local_world_var in LAUNCH_VARS:
        if rank_var in env and world_var in env:
            break
    else:
        return "single process", 0, 1, 0, 1
    rank, world = int(env[rank_var]), int(env[world_var])
    per_node = env.get(local_world_var) or (launcher == "srun" and env.get("SLURM_TASKS_PER_NODE")) or str(world)
    local_world = int(re.match(r"\d+", per_node).group())  # srun writes "4(x2)" for 4 on each of 2 nodes
    local = int(env.get(local_var, rank % local_world))
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise ValueError(f"{launcher} started {world} ranks but MASTER_ADDR or MASTER_PORT is not set; "
                         f"export both as the launch scripts do.")
    return launcher, rank, world, local, local_world


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

    def seconds(self, fn, local: bool = False) -> float:
        """Seconds per call of fn(): median over repeats of the slowest rank. Call on every rank.

        A collective runs a fixed number of calls, the same on every rank. A local op (`local`)
        runs for a fixed time instead, so every rank is busy for the whole window: on a CPU the
        ranks share cores, and a rank finishing early would hand its core to the others."""
        fn()  # warm-up: allocation, communicator set-up, caches
        pilot = self.across_ranks([self._run(fn, 1)])[0]
        calls = max(1, min(1000, round(self.target_s / max(pilot, 1e-9) / (10 if local else 1))))
        window = self.window_s if local else 0.0
        return statistics.median(self.across_ranks([self._run(fn, calls, window) for _ in range(self.repeats)]))


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


def op_overhead_us(bench: Bench) -> float:
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
    """Every rank creates every group (torch requires it); returns the one holding `rank`."""
    import torch.distributed as dist

    mine = None
    for members in groups:
        group = dist.group.WORLD if len(members) == world else dist.new_group(members)
        mine = group if rank in members else mine
    return mine


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
    """{op: {placement: {size: (alpha s, bytes/s)}}}, this rank's groups, and the raw points."""
    fits, groups, raw = {}, {}, {}
    for (place, p), members in parts.items():
        group = groups[(place, p)] = my_group(members, rank, bench.world)
        for op in COLLECTIVE_OPS:
            points = [(n, bench.seconds(collective_call(op, n, p, group, bench.device)))
                      for n in message_sizes(p, quick, bench.cuda)]
            raw[(op, place, p)] = points
            fits.setdefault(op, {}).setdefault(place, {})[p] = fit_alpha_beta(points)
    return fits, groups, raw


def overlap_efficiency(bench: Bench, group, p: int, fit, gemms, dtype_name: str, quick: bool) -> tuple[float, tuple]:
    """Share of an all-reduce that a GEMM of about its length hides: (t_c + t_m - t_b) / min(t_c, t_m),
    with t_c the GEMMs alone, t_m the all-reduce alone, t_b both (the all-reduce async)."""
    import torch
    import torch.distributed as dist

    target = (0.005 if quick else 0.02) if bench.cuda else (0.03 if quick else 0.1)
    alpha, bw = fit
    nbytes = math.ceil(min(max((target - alpha) * bw, MIB), 256 * MIB) / (4 * p)) * 4 * p
    buf = torch.zeros(nbytes // 4, device=bench.device)
    t_m = bench.seconds(lambda: dist.all_reduce(buf, group=group))
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

    t_c, t_b = bench.seconds(compute, local=True), bench.seconds(both)
    return min(1.0, max(0.0, (t_c + t_m - t_b) / min(t_c, t_m))), (nbytes, t_c, t_m, t_b)


# ---------------------------------------------------------------- the profile

def run_calibration(quick: bool = True, base: Machine | None = None, dtypes: list[str] | None = None,
                    launcher: str = "torch.distributed", report: bool = False) -> dict:
    """Measure on every rank at once; the profile (machine_to_dict form), the same on every rank.

    torch.distributed must be initialized, unless this is a single process (then the profile
    has no collective fits). `base` gives the peaks and NIC count (else: the best GEMM measured,
    one NIC) and the links not measured here. The first of `dtypes` gives the efficiency curve.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    cuda = torch.cuda.is_available() and (world == 1 or dist.get_backend() != "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtypes = dtypes or (["bfloat16", "float32"] if cuda else ["float32"])
    bench, notes = Bench(device, world, quick), []
    hosts = [socket.gethostname()] * world
    if world > 1:
        dist.all_gather_object(hosts, socket.gethostname())
    per_node, nodes = max(Counter(hosts).values()), len(set(hosts))

    gemms = {d: measure_gemms(bench, d, quick) for d in dtypes}
    peaks = dict(base.peak_tflops) if base else {}
    for d, results in gemms.items():
        peaks.setdefault(d, max(2.0 * m * n * k / s for (m, n, k), s in results) / 1e12)
    curve = efficiency_curve(gemms[dtypes[0]], peaks[dtypes[0]] * 1e12)
    mem_bw, overhead = memory_bandwidth_gbs(bench), op_overhead_us(bench)
    memory = (torch.cuda.get_device_properties(device).total_memory if cuda
              else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / per_node)  # host RAM shared by its ranks
    memory_gib = bench.across_ranks([memory / GIB], largest=False)[0]

    parts = partitions(hosts) if world > 1 else {}
    fits, groups, raw = measure_collectives(bench, parts, rank, quick) if world > 1 else ({}, {}, {})
    intra, inter = (fits.get("all_reduce", {}).get(place, {}) for place in ("intra", "inter"))
    overlap, overlap_times = (base.overlap_efficiency if base else Machine.overlap_efficiency), None
    if intra:
        # Ring algebra (DESIGN §7): t = 2(p-1) a + 2(p-1)/p n/B, read off the fit at the largest p.
        p = max(intra)
        alpha, bw = intra[p]
        intra_link = Link(bw * 2 * (p - 1) / p / 1e9, max(alpha * 1e6 / (2 * (p - 1)), 0.01))
        overlap, overlap_times = overlap_efficiency(bench, groups[("intra", p)], p, intra[p],
                                                    gemms[dtypes[0]], dtypes[0], quick)
    else:
        intra_link = base.intra_node if base else Link(mem_bw, max(overhead, 0.01))
        notes.append("intra_node not measured (" + ("from the base profile" if base else
                                                     "memory bandwidth and op overhead stand in") + ")")
        notes.append("overlap_efficiency not measured")
    nics = base.nics_per_node if base else 1
    if inter:
        p = nodes if nodes in inter else max(inter)
        alpha, bw = inter[p]
        # group_placement shares a node's NICs among the groups' streams leaving it; undo that.
        streams = max(1, per_node // max(Counter(hosts[r] for r in parts[("inter", p)][0]).values()))
        inter_link = Link(bw * 2 * (p - 1) / p * streams / nics / 1e9, max(alpha * 1e6 / (2 * (p - 1)), 0.01))
    else:
        inter_link = base.inter_node if base else intra_link
        notes.append("inter_node not measured (" + ("from the base profile" if base else "a copy of intra_node") + ")")

    where = hosts[0] + (f" and {nodes - 1} more nodes" if nodes > 1 else "")
    machine = Machine(
        name=f"calibrated-{hosts[0]}",
        devices_per_node=per_node,
        memory_gb=_sig(memory_gib),
        peak_tflops={d: _sig(v) for d, v in peaks.items()},
        memory_bandwidth_gbs=_sig(mem_bw),
        intra_node=Link(_sig(intra_link.bandwidth_gbs), _sig(intra_link.latency_us)),
        inter_node=Link(_sig(inter_link.bandwidth_gbs), _sig(inter_link.latency_us)),
        nics_per_node=nics,
        gemm_efficiency=tuple((_sig(f), _sig(e)) for f, e in curve),
        overlap_efficiency=_sig(overlap),
        op_overhead_us=_sig(overhead),
        usable_memory_fraction=0.9,
        collectives={op: {place: {p: CollectiveFit(_sig(a * 1e6), _sig(b / 1e9)) for p, (a, b) in by_p.items()}
                          for place, by_p in by_place.items()} for op, by_place in fits.items()},
        source="; ".join([f"calibrated on {where} with {world} rank{'s' * (world > 1)} ({launcher}) on {date.today()}, quick={quick}"]
                         + ([f"peaks and NICs from {base.name}"] if base else []) + notes),
    )
    if report and rank == 0:
        print_report(machine, gemms, dtypes, raw, fits, overlap_times)
    return machine_to_dict(machine)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # four significant digits: the measurements are not better


def print_report(machine: Machine, gemms, dtypes, raw, fits, overlap_times) -> None:
    print(f"perfmodel calibrate: {machine.source}")
    for d in dtypes:
        peak = machine.peak_tflops[d]
        print(f"GEMM {d}: peak {peak:.4g} TFLOP/s;  m x n x k: TFLOP/s (of peak)")
        print("  " + ",  ".join(f"{m}x{n}x{k}: {2 * m * n * k / s / 1e12:.3g} ({2 * m * n * k / s / 1e12 / peak:.0%})"
                                for (m, n, k), s in gemms[d]))
    print("efficiency curve: " + ", ".join(f"{f:.2g}:{e:.2f}" for f, e in machine.gemm_efficiency))
    print(f"memory bandwidth {machine.memory_bandwidth_gbs:.4g} GB/s, op overhead {machine.op_overhead_us:.3g} us, "
          f"memory {machine.memory_gb:.4g} GiB per rank")
    if fits:
        print("collectives: alpha us, GB/s of full buffer, worst fit error;  measured bytes: ms")
    for (op, place, p), points in raw.items():
        alpha, bw = fits[op][place][p]
        worst = max(abs(alpha + n / bw - t) / t for n, t in points)
        print(f"  {op:<14} {place} p={p:<3} {alpha * 1e6:9.1f} {bw / 1e9:9.3f} {worst:6.0%};  "
              + ", ".join(f"{n}: {t * 1e3:.3g}" for n, t in points))
    print("links (per ring step): " + ", ".join(f"{name} {link.bandwidth_gbs:.4g} GB/s {link.latency_us:.4g} us" for name, link
                                                in (("intra", machine.intra_node), ("inter", machine.inter_node))))
    if overlap_times:
        nbytes, t_c, t_m, t_b = overlap_times
        print(f"overlap: all-reduce {nbytes / MIB:.3g} MiB {t_m * 1e3:.3g} ms, GEMMs {t_c * 1e3:.3g} ms, "
              f"together {t_b * 1e3:.3g} ms -> efficiency {machine.overlap_efficiency:.2f}")
    sys.stdout.flush()


def write_profile(profile: dict, path: str | Path) -> None:
    header = ("# Machine profile measured by `python -m perfmodel calibrate` (see source); "
              "load with perfmodel.machine.load_machine.\n")
    Path(path).write_text(header + yaml.safe_dump(profile, sort_keys=False, default_flow_style=None))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m perfmodel calibrate",
                                     description="Measure this allocation (run under the launcher) and write a machine profile.")
    parser.add_argument("--out", required=True, help="YAML file rank 0 writes")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, message sizes and repeats")
    parser.add_argument("--base", help="profile name or YAML whose peaks, NIC count and unmeasured links to keep")
    parser.add_argument("--dtype", help="comma list of GEMM dtypes; the first gives the efficiency curve "
                                        "(default float32; bfloat16,float32 on GPUs)")
    args = parser.parse_args(argv)
    try:  # the user's mistakes, before any rank waits on another
        base = load_machine(args.base) if args.base else None
        dtypes = args.dtype.split(",") if args.dtype else None
        bad = [d for d in dtypes or [] if d not in ("float32", "bfloat16", "float16")]
        if bad:
            raise ValueError(f"--dtype {','.join(bad)} is not one of float32, bfloat16, float16")
        launcher, rank, world, local, local_world = launch_from_env()
    except (ProfileError, ValueError) as error:
        print(f"perfmodel calibrate: {error}", file=sys.stderr)
        return 2
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # the node's ranks share its cores
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank, world_size=world)
    try:
        profile = run_calibration(args.quick, base, dtypes, launcher, report=rank == 0)
        if rank == 0:
            write_profile(profile, args.out)
            print(f"wrote {args.out}")
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0
