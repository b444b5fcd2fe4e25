"""axon against PyTorch's own parallelism on the same Llama, the same data and the same optimizer.

Pairs (axon layout vs what a user would otherwise pick; natives in benchmarks/native_models.py):
  2 ranks: data=2 vs DDP, depth=2 vs FSDP2, col=2 vs DTensor TP, row=2 vs DTensor TP
  4 ranks: depth=2,col=2 vs FSDP2 + TP on a (dp 2, tp 2) DeviceMesh
and, when axon's config has an `overlap` section, axon with every overlap on vs every off.

Timing: one gloo spawn per world size (torch threads per rank = cores // world). For each pair
both sides are built in the same processes from identical weights (axon's gathered full
parameters loaded into the plain model before it is parallelized), then steps alternate A, B
(B, A on odd steps), each timed as barrier -> perf_counter around the whole step (data,
forward, backward, gradient sync, clipping, AdamW) -> the max over ranks. Reported: medians
over the timed steps and the median of per-step ratios.
Data: every native rank trains on exactly the batches axon gives the same rank
(`shard_micro_batches`), i.e. DDP/FSDP shard by data rank and TP ranks see the same tokens.
Memory: ru_maxrss is process-lifetime, and both sides of a pair share a process, so peak
memory comes from separate spawns, one per (pair, side), that build only that side and run
--mem-steps steps: the figure is VmHWM at the end minus VmRSS just before building (after
torch import and process-group setup), per rank, in MB. Native sharded models are built there
on the meta device and materialize only their shards (the FSDP2 recipe); DDP holds the model whole.

    .venv/bin/python -m benchmarks.compare_native [--model 20M] [--seq 128] [--batch 8] [--steps 10]
        [--warmup 3] [--axon-set overlap.all_reduce=false ...] [--only data=2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from axon.config import RunConfig, apply_override, build_config
from axon.data.batches import shard_micro_batches, token_source
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.bootstrap import free_port
from axon.runtime.trainer import Trainer
from benchmarks.native_models import NativeStep

RESULTS = Path(__file__).resolve().parent / "results" / "compare_native.json"
NATIVE_PAIRS = [  # (name, world, axon layout, native kind)
    ("data=2 vs DDP", 2, {"data": 2}, "ddp"),
    ("depth=2 vs FSDP2", 2, {"depth": 2}, "fsdp"),
    ("col=2 vs TP", 2, {"col": 2}, "tp"),
    ("row=2 vs TP", 2, {"row": 2}, "tp"),
    ("depth=2,col=2 vs FSDP2+TP", 4, {"depth": 2, "col": 2}, "fsdp_tp"),
]


def overlap_switches() -> list[str]:
    """The boolean switches of axon's `overlap` config section ([] when this version has none)."""
    overlap = next((f for f in dataclasses.fields(RunConfig) if f.name == "overlap"), None)
    if overlap is None:
        return []
    return [f.name for f in dataclasses.fields(overlap.default_factory()) if isinstance(f.default, bool)]


def axon_config(args, layout: dict, overlap: bool | None = None) -> RunConfig:
    raw = {"model": {"preset": args.model, "seq_len": args.seq}, "layout": dict(layout),
           "train": {"steps": args.warmup + args.steps, "global_batch": args.batch, "lr": 3e-4,
                     "schedule": "constant", "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0}}
    for item in args.axon_set:
        apply_override(raw, item)
    if overlap is not None:  # the on/off comparison overrides every switch
        raw["overlap"] = {name: overlap for name in overlap_switches()}
    return build_config(raw)


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class AxonSide:
    def __init__(self, config, rank):
        self.trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))

    def step(self, step: int) -> float:
        return self.trainer.step(step)["loss"]


class NativeSide:
    def __init__(self, kind, config, rank, world, full):
        self.config, self.grid = config, Grid(config.layout, rank)  # the grid only picks axon's batches
        self.source = token_source(config)
        self.native = NativeStep(kind, config.model, world, full, config.train)
        shards = config.layout.data * config.layout.depth
        self.tokens_per_shard = config.train.global_batch * config.model.seq_len // shards

    def step(self, step: int) -> float:
        batches = shard_micro_batches(self.source, self.config, self.grid, step, torch.device("cpu"))
        return self.native.step(batches, self.tokens_per_shard)


def build_pair(pair, args, rank, world):
    name, _, layout, kind = pair
    if kind == "overlap":
        return AxonSide(axon_config(args, layout, True), rank), AxonSide(axon_config(args, layout, False), rank)
    config = axon_config(args, layout)
    a = AxonSide(config, rank)
    full = full_parameters(a.trainer.model, a.trainer.grid)  # identical start for the native side
    return a, NativeSide(kind, config, rank, world, full)


def quiet():
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)


def time_worker(rank, world, port, args, pairs, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, args.cores // world))
    results = []
    for pair in pairs:
        sides = build_pair(pair, args, rank, world)
        times, losses = ([], []), ([], [])
        for step in range(args.warmup + args.steps):
            for i in ((0, 1) if step % 2 == 0 else (1, 0)):
                dist.barrier()
                start = time.perf_counter()
                losses[i].append(sides[i].step(step))
                times[i].append(time.perf_counter() - start)
        slowest = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
        results.append({"times": slowest[:, args.warmup:].tolist(), "losses": losses})
        del sides
        gc.collect()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def memory_worker(rank, world, port, args, pair, side, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, args.cores // world))
    _, _, layout, kind = pair
    config = axon_config(args, layout)
    dist.barrier()
    before = rss_mb("VmRSS")
    model = AxonSide(config, rank) if side == "axon" else NativeSide(kind, config, rank, world, None)
    for step in range(args.mem_steps):
        model.step(step)
    peaks = [None] * world
    dist.all_gather_object(peaks, rss_mb("VmHWM") - before)
    if rank == 0:
        Path(out).write_text(json.dumps(peaks))
    dist.destroy_process_group()


def spawn(fn, world, *args) -> object:
    port = free_port()  # a fresh port per spawn: a reused one can hang the rendezvous
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        mp.spawn(fn, args=(world, port, *args, out), nprocs=world)
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def summarize(pair, raw, memory=None) -> dict:
    name, world, layout, kind = pair
    a, b = raw["times"]
    la, lb = raw["losses"]
    row = {"pair": name, "world": world, "layout": layout, "native": kind,
           "a_ms": statistics.median(a) * 1e3, "b_ms": statistics.median(b) * 1e3,
           "median_pair_ratio": statistics.median(x / y for x, y in zip(a, b)),
           "first_loss": [la[0], lb[0]], "first_loss_diff": abs(la[0] - lb[0]),
           "last_loss_diff": abs(la[-1] - lb[-1]), "raw_step_s": {"a": a, "b": b}}
    row["ratio"] = row["a_ms"] / row["b_ms"]
    if memory is not None:
        row["peak_mb_per_rank"] = memory
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="20M", help="preset of axon/spec/shapes.py")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (overrides the preset's)")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences, the same for both sides")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    parser.add_argument("--mem-steps", type=int, default=2, help="steps of each memory run (0 skips them)")
    parser.add_argument("--cores", type=int, default=2, help="torch threads per rank = cores // world")
    parser.add_argument("--axon-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every axon config (repeatable)")
    parser.add_argument("--only", action="append", default=[], metavar="LAYOUT",
                        help="run only the pairs of this axon layout, e.g. data=2 or depth=2,col=2 (repeatable); "
                             "results then go to --out only if given")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {RESULTS.name} in results/)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "compare_native_only.json" if args.only else RESULTS
    started = time.perf_counter()
    switches = overlap_switches()
    overlap_pairs = [(f"axon overlap on/off {'x'.join(f'{k}={v}' for k, v in lay.items())}", w, lay, "overlap")
                     for _, w, lay, _ in NATIVE_PAIRS if switches]
    rows, overlap_rows = [], []
    wanted = lambda pair: not args.only or ",".join(f"{k}={v}" for k, v in pair[2].items()) in args.only  # noqa: E731
    for world in sorted({p[1] for p in NATIVE_PAIRS if wanted(p)}):
        pairs = [p for p in NATIVE_PAIRS + overlap_pairs if p[1] == world and wanted(p)]
        raw = spawn(time_worker, world, args, pairs)
        for pair, r in zip(pairs, raw):
            if pair[3] == "overlap":
                overlap_rows.append(summarize(pair, r))
                continue
            memory = ({side: spawn(memory_worker, world, args, pair, side) for side in ("axon", "native")}
                      if args.mem_steps else None)
            rows.append(summarize(pair, r, memory))
    report = {
        "command": " ".join([sys.executable, "-m", "benchmarks.compare_native",
                             *(sys.argv[1:] if argv is None else argv)]),
        "torch": torch.__version__, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads_per_rank": {w: max(1, args.cores // w) for w in (2, 4)},
        "axon_config_example": axon_config(args, {}).to_dict(),
        "overlap_switches": switches, "pairs": rows, "overlap": overlap_rows,
        "memory_method": "per (pair, side) spawn: VmHWM after --mem-steps steps minus VmRSS before building, MB",
        "wall_s": time.perf_counter() - started,
    }
    print_tables(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return report


def print_tables(r: dict, args) -> None:
    print(f"model {args.model}, seq {args.seq}, global batch {args.batch}, fp32, gloo, torch {r['torch']}, "
          f"{args.steps} timed steps per side after {args.warmup} warm-up; axon overrides {args.axon_set or 'none'}")
    print(f"{'pair':28}{'world':>6}{'axon ms':>10}{'native ms':>11}{'ratio':>7}{'pair-med':>9}"
          f"{'axon MB':>9}{'native MB':>10}{'|dloss| 1st':>12}{'last':>9}")
    for row in r["pairs"]:
        mem = row.get("peak_mb_per_rank")
        mb = (f"{max(mem['axon']):9.0f}{max(mem['native']):10.0f}" if mem else f"{'-':>9}{'-':>10}")
        print(f"{row['pair']:28}{row['world']:6d}{row['a_ms']:10.1f}{row['b_ms']:11.1f}{row['ratio']:7.3f}"
              f"{row['median_pair_ratio']:9.3f}{mb}{row['first_loss_diff']:12.1e}{row['last_loss_diff']:9.1e}")
    print("ratio = axon/native of median step times; pair-med = median of per-step ratios; "
          "MB = peak RSS increase, max over ranks")
    if not r["overlap_switches"]:
        print("overlap comparison is not available in this version (axon's config has no `overlap` section)")
        return
    print(f"axon overlap all on vs all off ({', '.join(r['overlap_switches'])}):")
    print(f"{'layout':28}{'world':>6}{'on ms':>10}{'off ms':>11}{'on/off':>7}{'pair-med':>9}{'|dloss| last':>13}")
    for row in r["overlap"]:
        lay = ",".join(f"{k}={v}" for k, v in row["layout"].items())
        print(f"{lay:28}{row['world']:6d}{row['a_ms']:10.1f}{row['b_ms']:11.1f}{row['ratio']:7.3f}"
              f"{row['median_pair_ratio']:9.3f}{row['last_loss_diff']:13.1e}")


if __name__ == "__main__":
    main()
