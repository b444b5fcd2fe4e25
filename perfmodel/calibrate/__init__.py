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
import dataclasses
import os
import socket
import statistics
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import yaml

from axon.spec.launcher import LaunchInfo, detect_launch
from perfmodel.machine import CollectiveFit, Link, Machine, ProfileError, load_machine, machine_to_dict
from axon.spec.shapes import PRESETS, ModelShape, preset
from perfmodel.calibrate.compute import (measure_attention, measure_gemms_by_min_dim, measure_memory_kinds,
                                         min_dim_curves)
from perfmodel.calibrate.measure import (MIB, Bench, efficiency_curve, measure_collectives, measure_gemms,
                                         memory_bandwidth_gbs, bare_op_us, overlap_efficiency, partitions)
from perfmodel.calibrate.reference import measure_in_context_slowdown, measure_op_overhead_us, reference_shape

GIB = 1 << 30  # memory_gb is in GiB, as perfmodel.memory counts it; bandwidths use GB = 1e9

LAUNCHER_NAMES = {"torchrun": "torchrun", "slurm": "srun", "mpi": "mpiexec", "single": "single process"}


def launch_from_env(env=os.environ) -> tuple[LaunchInfo, str]:
    """Where this rank sits, read as the engine reads it (`axon.spec.launcher.detect_launch`), and
    the launcher's name for the profile's source line."""
    info = detect_launch(env)
    if info.launcher == "mpi":  # the engine meets through mpi4py here; calibrate keeps to env:// instead
        missing = [name for name, value in (("MASTER_ADDR", info.master_addr), ("MASTER_PORT", info.master_port),
                                            ("the local rank", info.local_rank)) if value is None]
        if missing and info.world_size > 1:
            raise ValueError(f"mpiexec started {info.world_size} ranks but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not set; export MASTER_ADDR and MASTER_PORT "
                             f"as launch/mpiexec.sh does.")
    return info, LAUNCHER_NAMES[info.launcher]


# ---------------------------------------------------------------- the profile

def run_calibration(quick: bool = True, base: Machine | None = None, dtypes: list[str] | None = None,
                    launcher: str = "torch.distributed", report: bool = False, gemm_tuning: str = "auto",
                    reference: tuple[ModelShape, int] | None = None) -> dict:
    """Measure on every rank at once; the profile (machine_to_dict form), the same on every rank.

    torch.distributed must be initialized, unless this is a single process (then the profile
    has no collective fits). `base` gives the peaks and NIC count (else: the best GEMM measured,
    one NIC) and the links not measured here. The first of `dtypes` gives the efficiency curves
    (GEMMs by shape, attention, memory-bound work). `gemm_tuning` as train.gemm_tuning: "auto"
    times GEMMs as the tuner would run them on a GPU and as held on a CPU. `reference`, a
    (model, micro-batch), is the whole step `in_context_slowdown` is measured on (else a small
    built-in one): best the model to be planned at one rank's share of the batch.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    cuda = torch.cuda.is_available() and (world == 1 or dist.get_backend() != "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtypes = dtypes or (["bfloat16", "float32"] if cuda else ["float32"])
    bench, notes = Bench(device, world, quick), []
    placed = [(socket.gethostname(), _usable_cores(), torch.get_num_threads())] * world
    if world > 1:
        dist.all_gather_object(placed, placed[0])
    hosts = [host for host, _, _ in placed]
    per_node, nodes = max(Counter(hosts).values()), len(set(hosts))

    gemms = {d: measure_gemms(bench, d, quick) for d in dtypes}
    peaks = dict(base.peak_tflops) if base else {}
    for d, results in gemms.items():
        peaks.setdefault(d, max(2.0 * m * n * k / s for (m, n, k), s in results) / 1e12)
    tuned = cuda if gemm_tuning == "auto" else gemm_tuning == "on"
    by_shape = measure_gemms_by_min_dim(bench, dtypes[0], quick, tuned)
    if not base:
        peaks[dtypes[0]] = max(peaks[dtypes[0]], max(2.0 * m * n * k / s for (m, n, k), _, s in by_shape) / 1e12)
    peak = peaks[dtypes[0]] * 1e12
    curve = efficiency_curve(gemms[dtypes[0]] + [(shape, s) for shape, _, s in by_shape], peak)
    mem_bw, bare_op = memory_bandwidth_gbs(bench), bare_op_us(bench)
    attention = measure_attention(bench, dtypes[0], quick, peak)
    memory_kinds = measure_memory_kinds(bench, dtypes[0], quick, mem_bw)
    memory = (torch.cuda.get_device_properties(device).total_memory if cuda
              else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / per_node)  # host RAM shared by its ranks
    memory_gib = bench.across_ranks([memory / GIB], largest=False)[0]

    parts = partitions(hosts) if world > 1 else {}
    fits, groups, raw = measure_collectives(bench, parts, rank, quick) if world > 1 else ({}, {}, {})
    intra, inter = (fits.get("all_reduce", {}).get(place, {}) for place in ("intra", "inter"))
    overlap, overlap_times = (base.overlap_efficiency if base else Machine.overlap_efficiency), None
    # A link's latency is kept at 0.01 us or more: a fit's intercept can come out zero or negative
    # on a quiet machine, and a profile's latency_us must be positive (perfmodel.machine).
    if intra:
        # Ring algebra (DESIGN §7): t = 2(p-1) a + 2(p-1)/p n/B, read off the fit at the largest p.
        p = max(intra)
        alpha, bw = intra[p]
        intra_link = Link(bw * 2 * (p - 1) / p / 1e9, max(alpha * 1e6 / (2 * (p - 1)), 0.01))
        overlap, overlap_times = overlap_efficiency(bench, groups[("intra", p)], p, intra[p],
                                                    gemms[dtypes[0]], dtypes[0], quick)
    else:
        intra_link = base.intra_node if base else Link(mem_bw, max(bare_op, 0.01))
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
        gemm_efficiency_by_min_dim={d: _points(c) for d, c in min_dim_curves(by_shape, peak).items()},
        attention_efficiency={phase: _points(c) for phase, c in attention.items()},
        memory_efficiency={kind: _points(c) for kind, c in memory_kinds.items()},
        overlap_efficiency=_sig(overlap),
        # Not measured here: the shipped profiles' estimate (the runtime context, communicator
        # buffers and allocator slack take about a tenth of device memory).
        usable_memory_fraction=0.9,
        collectives={op: {place: {p: CollectiveFit(_sig(a * 1e6), _sig(b / 1e9)) for p, (a, b) in by_p.items()}
                          for place, by_p in by_place.items()} for op, by_place in fits.items()},
        blocking_latency_us={place: {p: _sig(seconds * 1e6) for (kind, pl, p), seconds in raw.items()
                                     if kind == "in_context" and pl == place}
                             for place in {pl for kind, pl, _ in raw if kind == "in_context"}},
        source="; ".join([f"calibrated on {where} with {world} rank{'s' * (world > 1)} ({launcher}) on {date.today()}, "
                          f"quick={quick}, GEMMs {'as the tuner picks' if tuned else 'as held'}"]
                         + ([f"peaks and NICs from {base.name}"] if base else []) + notes),
    )
    # The cost per framework op of a real step; a whole reference step against its price from
    # the curves above; how many compute threads share each core (CPU ranks of a node; a GPU
    # rank owns its device) and how many collectives a process group runs at once.
    machine = dataclasses.replace(machine, op_overhead_us=_sig(measure_op_overhead_us(bench, machine, dtypes[0])))
    slowdown, step_s, priced_s = measure_in_context_slowdown(bench, machine, dtypes[0], reference)
    shape, micro = reference or reference_shape(cuda)
    machine = dataclasses.replace(
        machine, in_context_slowdown=_sig(slowdown), oversubscription=1.0 if cuda else _sig(threads_per_core(placed)),
        concurrent_collectives=1 if cuda else gloo_threads(),
        source=f"{machine.source}; whole-step reference: {shape.layers} layers of hidden {shape.hidden}, "
               f"{micro} x {shape.seq_len} tokens")
    if report and rank == 0:
        print_report(machine, gemms, dtypes, raw, fits, overlap_times)
        print(f"whole step of a reference model: {step_s * 1e3:.4g} ms measured, {priced_s * 1e3:.4g} ms priced "
              f"-> in_context_slowdown {machine.in_context_slowdown:.3g}; oversubscription {machine.oversubscription:.3g}")
        sys.stdout.flush()
    return machine_to_dict(machine)


def _usable_cores() -> frozenset[int]:
    """The cores this process may run on (its binding or the allocation's, not the node's)."""
    return frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset(range(os.cpu_count() or 1))


def gloo_threads() -> int:
    """Asynchronous collectives a gloo process group runs at once: its worker threads (torch's
    default 2; NCCL runs a group's collectives one after another on its stream)."""
    import torch.distributed as dist

    try:
        return int(dist.ProcessGroupGloo._Options()._threads)
    except (AttributeError, TypeError, RuntimeError):
        return 2


def threads_per_core(placed: list[tuple[str, frozenset[int], int]]) -> float:
    """The most compute threads per core on any node, at least 1: (host, cores, threads) per rank;
    a node's ranks may share cores (one allocation) or hold their own (srun --cpu-bind)."""
    cores: dict[str, set[int]] = {}
    threads: Counter = Counter()
    for host, rank_cores, rank_threads in placed:
        cores.setdefault(host, set()).update(rank_cores)
        threads[host] += rank_threads
    return max(1.0, max(threads[host] / max(1, len(cores[host])) for host in cores))


def reference_from_args(model: str | None, seq: int | None, micro_batch: int) -> tuple[ModelShape, int] | None:
    """The whole-step reference the command line names, or None for the built-in one."""
    if micro_batch < 1:
        raise ValueError(f"--micro-batch must be at least 1, got {micro_batch}")
    if model is None:
        if seq is not None:
            raise ValueError("--seq sets the reference model's sequence length; give --model too")
        return None
    shape = preset(model, "--model")
    if seq is not None and seq < 1:
        raise ValueError(f"--seq must be at least 1, got {seq}")
    return (dataclasses.replace(shape, seq_len=seq) if seq else shape), micro_batch


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # four significant digits: the measurements are not better


def _points(curve) -> tuple[tuple[float, float], ...]:
    """A curve of (size, efficiency) points, one per size (the median where sizes repeat)."""
    by_size: dict[float, list[float]] = {}
    for size, eff in curve:
        by_size.setdefault(_sig(size), []).append(eff)
    return tuple((size, _sig(max(statistics.median(effs), 1e-4))) for size, effs in sorted(by_size.items()))


def print_report(machine: Machine, gemms, dtypes, raw, fits, overlap_times) -> None:
    print(f"perfmodel calibrate: {machine.source}")
    for d in dtypes:
        peak = machine.peak_tflops[d]
        print(f"GEMM {d}: peak {peak:.4g} TFLOP/s;  m x n x k: TFLOP/s (of peak)")
        print("  " + ",  ".join(f"{m}x{n}x{k}: {2 * m * n * k / s / 1e12:.3g} ({2 * m * n * k / s / 1e12 / peak:.0%})"
                                for (m, n, k), s in gemms[d]))
    print("efficiency curve: " + ", ".join(f"{f:.2g}:{e:.2f}" for f, e in machine.gemm_efficiency))
    for d, points in machine.gemm_efficiency_by_min_dim.items():
        print(f"  smallest dimension {d}: " + ", ".join(f"{f:.2g}:{e:.2f}" for f, e in points))
    for name, curves in (("attention (SDPA)", machine.attention_efficiency), ("memory-bound", machine.memory_efficiency)):
        for kind, points in curves.items():
            print(f"{name} {kind}: " + ", ".join(f"{f:.2g}:{e:.2f}" for f, e in points))
    print(f"memory bandwidth {machine.memory_bandwidth_gbs:.4g} GB/s, op overhead {machine.op_overhead_us:.3g} us, "
          f"memory {machine.memory_gb:.4g} GiB per rank")
    if fits:
        print("collectives: alpha us, GB/s of full buffer, worst fit error;  measured bytes: ms")
    for (op, place, p), points in raw.items():
        if op == "in_context":
            print(f"  a small all-reduce between GEMMs, {place} p={p}: {points * 1e6:.1f} us (blocking latency)")
            continue
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
    parser.add_argument("--gemm-tuning", choices=("auto", "on", "off"), default="auto",
                        help="time GEMMs as axon.kernels.tune picks them (auto: on GPUs, as train.gemm_tuning)")
    parser.add_argument("--dtype", help="comma list of GEMM dtypes; the first gives the efficiency curve "
                                        "(default float32; bfloat16,float32 on GPUs)")
    parser.add_argument("--model", help=f"the whole-step reference: a preset ({', '.join(PRESETS)}), best the "
                                        "model you will plan (default: a small built-in one)")
    parser.add_argument("--seq", type=int, help="the reference's sequence length (default: the preset's)")
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="the reference's sequences per step, best one rank's share of the batch (default 1)")
    args = parser.parse_args(argv)
    try:  # the user's mistakes, before any rank waits on another
        base = load_machine(args.base) if args.base else None
        dtypes = args.dtype.split(",") if args.dtype else None
        bad = [d for d in dtypes or [] if d not in ("float32", "bfloat16", "float16")]
        if bad:
            raise ValueError(f"--dtype {','.join(bad)} is not one of float32, bfloat16, float16")
        reference = reference_from_args(args.model, args.seq, args.micro_batch)
        info, launcher = launch_from_env()
        rank, world = info.rank, info.world_size
        local, local_world = info.local_rank or 0, info.local_world_size or 1
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
        host = f"[{info.master_addr}]" if ":" in info.master_addr else info.master_addr  # IPv6 literal
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{host}:{info.master_port}",
                                rank=rank, world_size=world)
    try:
        profile = run_calibration(args.quick, base, dtypes, launcher, report=rank == 0, gemm_tuning=args.gemm_tuning,
                                  reference=reference)
        if rank == 0:
            write_profile(profile, args.out)
            print(f"wrote {args.out}")
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0
