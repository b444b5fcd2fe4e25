"""The pipeline bubble, measured: how long each stage idles in a 1F1B step, plain and interleaved.

For p stages (one gloo process each), v virtual stages (chunks) per stage and m micro-batches, the engine's own PipelineStep
records when each stage computes; a step's window runs from the first stage's start to
the last stage's end, and a stage's idle fraction is the share of that window it spent
not computing (waiting for activations or gradients). Three numbers per stage:

* measured: medians over the timed steps;
* perfmodel: `perfmodel.pipeline_replay.simulate` (v = 1) or `simulate_interleaved` replaying the
  same order with this run's median forward and backward time of each stage's chunks (what
  `perfmodel.predict` does with modelled times);
* formula: (p - 1) / (v m + p - 1) idle, i.e. a bubble of (p - 1) / (v m) of the busy time.

    .venv/bin/python -m benchmarks.pipeline_bubble [--stages 2,4] [--virtual-stages 1,2,4] [--micro-batches 4,8,16]

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
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.schedules import bubble_fraction, idle_fraction
from benchmarks.compare_native import quiet, spawn
from perfmodel.pipeline_replay import simulate, simulate_interleaved

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_bubble.json"
# Sixteen even blocks (one per chunk at p = 4, v = 4); a small vocabulary keeps the embedding and
# head light, so stages are near even.
MODEL = {"layers": 16, "hidden": 128, "heads": 8, "kv_heads": 4, "ffn": 384, "vocab": 256, "seq_len": 128}


def run_stage(rank, world, port, args, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = []
    for v, m in [(v, m) for v in args.virtual_stages for m in args.micro_batches]:
        if v > 1 and m % world:
            results.append(None)  # interleaving runs micro-batches in groups of p
            continue
        config = build_config({"model": MODEL, "layout": {"pipe": world, "virtual_stages": v},
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


def summarize(p: int, v: int, m: int, per_stage: list[list[dict]]) -> dict:
    """per_stage[s][k]: stage s's record of timed step k."""
    steps = len(per_stage[0])
    idle = [[] for _ in range(p)]
    forward, backward = [[] for _ in range(p * v)], [[] for _ in range(p * v)]  # per virtual stage c p + s
    for k in range(steps):
        window = max(st[k]["end"] for st in per_stage) - min(st[k]["start"] for st in per_stage)
        for s in range(p):
            ops = per_stage[s][k]["ops"]
            idle[s].append(1.0 - sum(t1 - t0 for _, _, t0, t1, _ in ops) / window)
            for kind, _, t0, t1, c in ops:
                (forward if kind == "F" else backward)[c * p + s].append(t1 - t0)
    f = [statistics.median(x) for x in forward]
    b = [statistics.median(x) for x in backward]
    replay = simulate(f, b, m) if v == 1 else simulate_interleaved(f, b, p, m)
    return {
        "stages": p, "virtual_stages": v, "micro_batches": m,
        "measured_idle": [statistics.median(x) for x in idle],
        "perfmodel_idle": list(replay.idle_fraction),
        "formula_idle": idle_fraction(p, m, v),
        "formula_bubble_over_busy": bubble_fraction(p, m, v),
        "forward_ms": [1e3 * x for x in f], "backward_ms": [1e3 * x for x in b],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="2,4")
    parser.add_argument("--virtual-stages", default="1,2,4")
    parser.add_argument("--micro-batches", default="4,8,16")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.micro_batches = [int(x) for x in args.micro_batches.split(",")]
    args.virtual_stages = [int(x) for x in args.virtual_stages.split(",")]
    rows = []
    print(f"{'p':>2} {'v':>2} {'m':>3}  {'measured idle per stage':<28} {'perfmodel':<28} {'(p-1)/(vm+p-1)':>14} "
          f"{'(p-1)/(vm)':>10}")
    for p in (int(x) for x in args.stages.split(",")):
        everyone = spawn(run_stage, p, args)
        pairs = [(v, m) for v in args.virtual_stages for m in args.micro_batches]
        for i, (v, m) in enumerate(pairs):
            if everyone[0][i] is None:
                continue
            row = summarize(p, v, m, [everyone[s][i] for s in range(p)])
            rows.append(row)
            show = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            print(f"{p:>2} {v:>2} {m:>3}  {show(row['measured_idle']):<28} {show(row['perfmodel_idle']):<28} "
                  f"{row['formula_idle']:>14.3f} {row['formula_bubble_over_busy']:>10.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": MODEL, "cores": os.cpu_count(), "micro_batch": args.micro_batch,
                                          "steps": args.steps, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
