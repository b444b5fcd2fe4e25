"""The pipeline bubble, measured: how long each stage idles in a 1F1B step.

For p stages (one gloo process each) and m micro-batches, the engine's own PipelineStep
records when each stage computes; a step's window runs from the first stage's start to
the last stage's end, and a stage's idle fraction is the share of that window it spent
not computing (waiting for activations or gradients). Three numbers per stage:

* measured: medians over the timed steps;
* perfmodel: `perfmodel.pipeline.simulate` replaying the same 1F1B order with this run's
  median forward and backward time of each stage (what `perfmodel.predict` does with
  modelled times);
* formula: (p - 1) / (m + p - 1) idle, i.e. a bubble of (p - 1) / m of the busy time.

    .venv/bin/python -m benchmarks.pipeline_bubble [--stages 2,4] [--micro-batches 1,2,4,8,16]

With more stages than cores (p = 4 on a 2-core machine) the stages share cores while all
are busy, which lengthens the steady state and not the ramp: the stages become uneven and
measured idle sits above the formula at large m.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

from axon.config import build_config
from axon.grid import Grid
from axon.train import Trainer
from benchmarks.compare_native import quiet, spawn
from perfmodel.pipeline import simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_bubble.json"
# Eight even blocks; a small vocabulary keeps the embedding and head light, so stages are near even.
MODEL = {"layers": 8, "hidden": 256, "heads": 8, "kv_heads": 4, "ffn": 768, "vocab": 256, "seq_len": 128}


def run_stage(rank, world, port, args, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = []
    for m in args.micro_batches:
        config = build_config({"model": MODEL, "layout": {"pipe": world},
                               "train": {"steps": args.warmup + args.steps, "global_batch": m * args.micro_batch,
                                         "micro_batch": args.micro_batch, "lr": 1e-3, "seed": 3}})
        trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
        trainer.pipeline.timeline = []
        for step in range(args.warmup + args.steps):
            dist.barrier()
            trainer.step(step)
        timed = trainer.pipeline.timeline[args.warmup:]
        trainer.grid.destroy()
        results.append([{"start": r["start"], "end": r["end"], "ops": r["ops"]} for r in timed])
    everyone = [None] * world
    dist.all_gather_object(everyone, results)
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))
    dist.destroy_process_group()


def summarize(p: int, m: int, per_stage: list[list[dict]]) -> dict:
    """per_stage[s][k]: stage s's record of timed step k."""
    steps = len(per_stage[0])
    idle, forward, backward = [[] for _ in range(p)], [[] for _ in range(p)], [[] for _ in range(p)]
    for k in range(steps):
        window = max(st[k]["end"] for st in per_stage) - min(st[k]["start"] for st in per_stage)
        for s in range(p):
            ops = per_stage[s][k]["ops"]
            idle[s].append(1.0 - sum(t1 - t0 for _, _, t0, t1 in ops) / window)
            forward[s] += [t1 - t0 for kind, _, t0, t1 in ops if kind == "F"]
            backward[s] += [t1 - t0 for kind, _, t0, t1 in ops if kind == "B"]
    f = [statistics.median(x) for x in forward]
    b = [statistics.median(x) for x in backward]
    return {
        "stages": p, "micro_batches": m,
        "measured_idle": [statistics.median(x) for x in idle],
        "perfmodel_idle": list(simulate(f, b, m).idle_fraction),
        "formula_idle": (p - 1) / (m + p - 1),
        "formula_bubble_over_busy": (p - 1) / m,
        "forward_ms": [1e3 * x for x in f], "backward_ms": [1e3 * x for x in b],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="2,4")
    parser.add_argument("--micro-batches", default="1,2,4,8,16")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.micro_batches = [int(x) for x in args.micro_batches.split(",")]
    rows = []
    print(f"{'p':>2} {'m':>3}  {'measured idle per stage':<28} {'perfmodel':<28} {'(p-1)/(m+p-1)':>13} {'(p-1)/m':>8}")
    for p in (int(x) for x in args.stages.split(",")):
        everyone = spawn(run_stage, p, args)
        for i, m in enumerate(args.micro_batches):
            row = summarize(p, m, [everyone[s][i] for s in range(p)])
            rows.append(row)
            show = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            print(f"{p:>2} {m:>3}  {show(row['measured_idle']):<28} {show(row['perfmodel_idle']):<28} "
                  f"{row['formula_idle']:>13.3f} {row['formula_bubble_over_busy']:>8.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": MODEL, "cores": os.cpu_count(), "micro_batch": args.micro_batch,
                                          "steps": args.steps, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
