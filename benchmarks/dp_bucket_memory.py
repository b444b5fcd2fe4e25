"""Peak host memory of a data-parallel training step, per rank, for the gradient buckets.

Two gloo ranks train the same model at data=2 for a few steps, in fresh processes for each
micro-batch size. Each rank resets its peak resident set (VmHWM, via /proc/self/clear_refs)
before every step, after building the trainer, and reads it after the step: the first step
also allocates AdamW's moments, the later ones are the steady state. Run it once on each version of the code
(from that checkout's root) under a different --label; the results accumulate in one JSON
file, and the table compares every label in it.

    .venv/bin/python -m benchmarks.dp_bucket_memory --label after [--model 20M] [--steps 4]
        [--batch 8] [--micro-batch 1,4] [--out benchmarks/results/dp_bucket_memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import axon
from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from benchmarks.compare_native import quiet, spawn
from perfmodel.memory import memory_per_device
from axon.spec.training import TrainingSetup

RESULTS = Path(__file__).resolve().parent / "results" / "dp_bucket_memory.json"
MIB = 2.0 ** 20


def status_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def measure(args, micro_batch: int, rank: int) -> dict:
    config = build_config({"model": args.model, "layout": {"data": 2},
                           "train": {"steps": args.steps, "global_batch": args.batch, "micro_batch": micro_batch,
                                     "lr": 3e-4, "checkpoint_every": 0}})
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    built = status_mib("VmRSS")
    peaks = []
    for step in range(args.steps):
        dist.barrier()
        reset_peak()
        trainer.step(step)
        peaks.append(status_mib("VmHWM"))
    gradient_bytes = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    shape, layout = config.model, config.layout
    setup = TrainingSetup(global_batch=args.batch, seq_len=shape.seq_len, micro_batch=micro_batch, dtype="float32")
    micro = setup.micro_batches(layout.data * layout.depth, layout.pipe)[0]
    predicted = memory_per_device(shape, layout, setup, micro, shape.layers, True, True)
    del trainer
    return {"rss_after_build_mib": built, "peak_first_step_mib": peaks[0], "peak_later_steps_mib": max(peaks[1:]),
            "peak_per_step_mib": peaks, "gradient_mib": gradient_bytes / MIB,
            "perfmodel_gradients_mib": predicted["gradients"] * 1024}


def worker(rank, world, port, args, micro_batch, out):
    quiet()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    row = measure(args, micro_batch, rank)
    gathered = [None] * world
    dist.all_gather_object(gathered, row)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", required=True, help="the code version measured, e.g. before or after")
    parser.add_argument("--model", default="20M")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences")
    parser.add_argument("--micro-batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                        help="sequences per micro-batch per rank, one measurement each")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = []
    for micro_batch in args.micro_batch:  # fresh processes each: nothing left over from the last
        ranks = spawn(worker, 2, args, micro_batch)
        runs.append({"micro_batch": micro_batch, "micro_batches_per_rank": args.batch // 2 // micro_batch,
                     "per_rank": ranks,
                     **{key: max(r[key] for r in ranks) for key in ("rss_after_build_mib", "peak_first_step_mib",
                                                                    "peak_later_steps_mib")},
                     "gradient_mib": ranks[0]["gradient_mib"],
                     "perfmodel_gradients_mib": ranks[0]["perfmodel_gradients_mib"]})
    command = [sys.executable, "-m", "benchmarks.dp_bucket_memory", *(sys.argv[1:] if argv is None else argv)]
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report[args.label] = {"command": " ".join(command), "code": str(Path(axon.__file__).parent.parent),
                          "torch": torch.__version__, "model": args.model, "layout": "data=2 (2 gloo ranks)",
                          "global_batch": args.batch, "steps": args.steps, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    print("peak resident memory per rank (the larger of the 2 ranks), MiB")
    print(f"{'code':>8} {'micro-batches':>13} {'after build':>11} {'step 1 peak':>11} {'later peak':>10} "
          f"{'grads':>6} {'perfmodel grads':>15}")
    for label, entry in report.items():
        for run in entry["runs"]:
            print(f"{label:>8} {run['micro_batches_per_rank']:>6} of {run['micro_batch']:<4} "
                  f"{run['rss_after_build_mib']:>11.0f} {run['peak_first_step_mib']:>11.0f} "
                  f"{run['peak_later_steps_mib']:>10.0f} {run['gradient_mib']:>6.0f} "
                  f"{run['perfmodel_gradients_mib']:>15.0f}")


if __name__ == "__main__":
    main()
