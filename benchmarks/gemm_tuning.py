"""The training step with GEMM tuning on and off, per layout, and what each tuned GEMM gained.

For each layout, one gloo spawn builds three Trainers of the same config in the same processes
(identical weights and batches): "off" with the fixed GEMM modes, "on" with a kernels.GemmTuner
attached to every TensorParallelLinear, and "held" with a tuner that always keeps the mode as
held (routing cost alone, and the noise floor of the comparison). Steps rotate the order of the
sides, each timed as barrier -> perf_counter around the whole step -> the max over ranks. The
first steps are warm-up (tuned sides time their candidates in their first step; that step's
cost is reported on its own). Per-step: medians over the timed steps and the median of per-step
ratios. Per-GEMM: the tuner's own medians, the product as held vs the chosen candidate, on
rank 0 (how many keys other ranks chose differently is reported too).

    .venv/bin/python -m benchmarks.gemm_tuning [--model 20M] [--batch 8] [--steps 8] [--warmup 2]
        [--dtype float32|bfloat16] [--layouts 1 row=2 col=2] [--device cpu|cuda]

On one GPU (A100/H100/MI250X): --device cuda --layouts 1 --dtype bfloat16 --model 125M.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.linear import TensorParallelLinear
from axon.runtime.trainer import Trainer
from benchmarks.compare_native import quiet, spawn
from axon.kernels.tune import GemmTuner, device_name

RESULTS = Path(__file__).resolve().parent / "results" / "gemm_tuning.json"
# off: the fixed modes; held: routed through a tuner that always keeps the mode as held (what
# routing alone costs, and the noise floor); on: the tuner's choices.
SIDES = ("off", "held", "on")


def parse_layout(text: str) -> dict:
    """"1" -> {} (world 1); "row=2,col=2" -> {"row": 2, "col": 2}."""
    return {} if text == "1" else {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def attach(model, tuner: GemmTuner) -> None:
    for module in model.modules():
        if isinstance(module, TensorParallelLinear):
            module.gemm_tuner = tuner


def worker(rank, world, port, args, layout, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, args.cores // world))
    device = torch.device(args.device)
    config = build_config({"model": {"preset": args.model}, "layout": layout,
                           "train": {"steps": args.warmup + args.steps, "global_batch": args.batch, "lr": 3e-4,
                                     "schedule": "constant", "grad_clip": 1.0, "dtype": args.dtype}})
    sides = [Trainer(config, Grid(config.layout, rank), device) for _ in SIDES]
    tuners = [GemmTuner(repeats=args.tune_repeats, min_gain=math.inf), GemmTuner(repeats=args.tune_repeats)]
    for side, tuner in zip(sides[1:], tuners):
        attach(side.model, tuner)
    times, losses = tuple([] for _ in SIDES), tuple([] for _ in SIDES)
    for step in range(args.warmup + args.steps):
        for i in ((step + j) % len(SIDES) for j in range(len(SIDES))):
            dist.barrier()
            start = time.perf_counter()
            losses[i].append(sides[i].step(step)["loss"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the step's kernels, not their launches (DESIGN §10)
            times[i].append(time.perf_counter() - start)
    slowest = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
    per_rank = [None] * world
    tuned = tuners[1]
    mine = {"choices": [dataclasses.asdict(c) for c in tuned.choices], "peak_extra_bytes": tuned.peak_extra_bytes}
    dist.all_gather_object(per_rank, mine)
    if rank == 0:
        Path(out).write_text(json.dumps({"times": slowest.tolist(), "losses": losses, "ranks": per_rank,
                                         "tokens_per_micro_batch": config.train.global_batch * config.model.seq_len
                                         // (config.layout.data * config.layout.depth)}))
    dist.destroy_process_group()


def summarize(name: str, world: int, raw: dict, warmup: int) -> dict:
    off, held, on = (t[warmup:] for t in raw["times"])
    choices = raw["ranks"][0]["choices"]
    best_by_key = [{(c["label"], tuple(c["shape"]), c["held"]): c["best"] for c in r["choices"]} for r in raw["ranks"]]
    differing = sum(1 for other in best_by_key[1:] for key, best in other.items()
                    if best_by_key[0].get(key, best) != best)
    gemms = [{"role": c["label"], "shape": c["shape"], "held": c["held"], "best": c["best"],
              "held_s": c["candidates"][c["held"]], "best_s": c["candidates"][c["best"]],
              "speedup": c["candidates"][c["held"]] / c["candidates"][c["best"]], "candidates": c["candidates"]}
             for c in choices]
    return {"layout": name, "world": world, "tokens_per_micro_batch": raw["tokens_per_micro_batch"],
            "off_ms": statistics.median(off) * 1e3, "held_ms": statistics.median(held) * 1e3,
            "on_ms": statistics.median(on) * 1e3,
            "step_speedup": statistics.median(off) / statistics.median(on),
            "median_pair_speedup": statistics.median(a / b for a, b in zip(off, on)),
            "held_median_pair_speedup": statistics.median(a / b for a, b in zip(off, held)),
            "first_step_ms": {side: raw["times"][i][0] * 1e3 for i, side in enumerate(SIDES)},
            "last_loss_rel_diff": abs(raw["losses"][2][-1] - raw["losses"][0][-1]) / abs(raw["losses"][0][-1]),
            "gemm_keys": len(gemms), "changed": sum(g["best"] != g["held"] for g in gemms),
            "keys_chosen_differently_on_other_ranks": differing,
            "peak_extra_mib_per_rank": [r["peak_extra_bytes"] / 2**20 for r in raw["ranks"]],
            "gemms": gemms, "raw_step_s": {"off": off, "held": held, "on": on}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="20M", help="preset of axon/spec/shapes.py")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side (the first one tunes)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layouts", nargs="+", default=["1", "row=2", "col=2"],
                        help="layouts to compare: 1 (world 1) or AXIS=SIZE[,AXIS=SIZE], e.g. 1 row=2 depth=2,col=2")
    parser.add_argument("--cores", type=int, default=2, help="torch threads per rank = cores // world")
    parser.add_argument("--tune-repeats", type=int, default=5, help="timed samples per GEMM candidate")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    layouts = {name: parse_layout(name) for name in args.layouts}
    worlds = {name: math.prod(layout.values()) for name, layout in layouts.items()}
    if args.device == "cuda" and max(worlds.values()) > 1:
        parser.error("--device cuda runs world 1 only (one process on one GPU); use --layouts 1")
    started = time.perf_counter()
    rows = []
    for name, layout in layouts.items():
        world = worlds[name]
        raw = spawn(worker, world, args, layout)
        rows.append(summarize(name, world, raw, args.warmup))
    report = {"command": " ".join([sys.executable, "-m", "benchmarks.gemm_tuning",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "torch": torch.__version__, "device": device_name(torch.device(args.device)),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "layouts": rows, "wall_s": time.perf_counter() - started}
    print_tables(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return report


def print_tables(r: dict, args) -> None:
    print(f"model {args.model}, global batch {args.batch}, {args.dtype}, {r['device']} ({args.cores} cores), "
          f"torch {r['torch']}, {args.steps} timed steps per side after {args.warmup} warm-up")
    print(f"{'layout':8}{'world':>6}{'off ms':>9}{'held ms':>9}{'on ms':>9}{'speedup':>9}{'pair-med':>9}"
          f"{'held pm':>9}{'1st off':>9}{'1st on':>9}{'keys':>6}{'changed':>8}{'extra MiB':>10}{'|dloss|':>9}")
    for row in r["layouts"]:
        first = row["first_step_ms"]
        print(f"{row['layout']:8}{row['world']:6d}{row['off_ms']:9.1f}{row['held_ms']:9.1f}{row['on_ms']:9.1f}"
              f"{row['step_speedup']:9.3f}{row['median_pair_speedup']:9.3f}{row['held_median_pair_speedup']:9.3f}"
              f"{first['off']:9.0f}{first['on']:9.0f}{row['gemm_keys']:6d}{row['changed']:8d}"
              f"{max(row['peak_extra_mib_per_rank']):10.2f}{row['last_loss_rel_diff']:9.1e}")
    print("off = fixed modes; held = routed through a tuner that keeps every mode as held; on = tuned. "
          "speedup = off/on of median step times; pair-med = median of per-step off/on (held pm: off/held); "
          "1st = the first step (tuned sides time their candidates there); changed = GEMM keys whose winner "
          "is not the mode as held; extra MiB = the tuner's peak transient copy")
    print("\nper GEMM (rank 0; the tuner's medians; speedup = held / best)")
    print(f"{'layout':10}{'role':>8}{'M x N x K':>18}{'held':>6}{'best':>12}"
          f"{'held ms':>9}{'best ms':>9}{'speedup':>8}")
    for row in r["layouts"]:
        for g in row["gemms"]:
            shape = "x".join(str(s) for s in g["shape"])
            print(f"{row['layout']:10}{g['role']:>8}{shape:>18}{g['held']:>6}{g['best']:>12}"
                  f"{g['held_s'] * 1e3:9.3f}{g['best_s'] * 1e3:9.3f}{g['speedup']:8.2f}")


if __name__ == "__main__":
    main()
