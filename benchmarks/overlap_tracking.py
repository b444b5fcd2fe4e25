"""A long run with every overlap on tracks the same run with every overlap off.

Both runs are built in the same gloo processes from the same config (the main job's 1M
model on the generated default corpus, at a layout where all four overlaps act:
data 2 x depth 2 x col 2 by default) and step alternately, so they also make a side-by-side
timing. Reported: the largest loss difference over all steps, the largest parameter
difference at the end (both should be exactly 0: the same collectives run in the same
order), median step time, exposed communication and overlap fraction of each.

    .venv/bin/python -m benchmarks.overlap_tracking [--steps 200] [--layout data=2,depth=2,col=2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from axon.config import load_config
from axon.data.prepare import main as data_main
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from benchmarks.compare_native import quiet, spawn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "overlap_tracking.json"
SWITCHES = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")


def build(args, on: bool) -> Trainer:
    layout = [f"layout.{item}" for item in args.layout.split(",")]
    overrides = [*layout, f"train.steps={args.steps}", "train.checkpoint_every=0", f"data.source={args.corpus}",
                 *(f"overlap.{name}={str(on).lower()}" for name in SWITCHES)]
    config = load_config(ROOT / "axon" / "configs" / "local.yaml", overrides)
    return Trainer(config, Grid(config.layout, dist.get_rank()), torch.device("cpu"))


def worker(rank, world, port, args, out):
    quiet()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    runs = {"on": build(args, True), "off": build(args, False)}
    history = {name: [] for name in runs}
    for step in range(args.steps):
        for name in (("on", "off") if step % 2 == 0 else ("off", "on")):
            dist.barrier()
            history[name].append(runs[name].step(step))
    params = {name: full_parameters(run.model, run.grid) for name, run in runs.items()}
    param_diff = max((params["on"][n] - params["off"][n]).abs().max().item() for n in params["on"])
    if rank == 0:
        Path(out).write_text(json.dumps({"history": history, "param_diff": param_diff}))
    dist.destroy_process_group()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layout", default="data=2,depth=2,col=2", help="comma-separated axis=size")
    parser.add_argument("--corpus", default=str(ROOT / "runs" / "data" / "corpus.tok"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not Path(args.corpus).is_file():
        data_main(["prepare", "--default-corpus", "--out", args.corpus])
    world = 1
    for item in args.layout.split(","):
        world *= int(item.split("=")[1])
    started = time.perf_counter()
    result = spawn(worker, world, args)
    history = result["history"]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(history["on"], history["off"]))
    timed = {name: rows[1:] for name, rows in history.items()}  # the first step records the gather order
    summary = {name: {key: statistics.median(row[key] for row in rows)
                      for key in ("step_time_s", "comm_s", "exposed_comm_s", "overlap_fraction")}
               for name, rows in timed.items()}
    report = {"command": " ".join([sys.executable, "-m", "benchmarks.overlap_tracking",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "layout": args.layout, "world": world, "steps": args.steps,
              "max_loss_diff": loss_diff, "max_param_diff": result["param_diff"],
              "first_loss": history["on"][0]["loss"], "last_loss": history["on"][-1]["loss"],
              "median": summary, "losses": {name: [row["loss"] for row in rows] for name, rows in history.items()},
              "wall_s": time.perf_counter() - started}
    print(f"{args.steps} steps at {args.layout} ({world} gloo ranks), main-job model and corpus")
    print(f"loss {report['first_loss']:.4f} -> {report['last_loss']:.4f}; largest |loss on - loss off| "
          f"{loss_diff:.1e}, largest parameter difference at the end {result['param_diff']:.1e}")
    print(f"{'overlap':8}{'step ms':>9}{'comm ms':>9}{'exposed ms':>12}{'overlap frac':>14}")
    for name, row in summary.items():
        print(f"{name:8}{row['step_time_s'] * 1e3:9.1f}{row['comm_s'] * 1e3:9.1f}{row['exposed_comm_s'] * 1e3:12.1f}"
              f"{row['overlap_fraction']:14.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
