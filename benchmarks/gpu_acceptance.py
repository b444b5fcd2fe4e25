"""Acceptance run on one GPU: bf16 training, GEMM tuning, the trace's device clock, MFU, memory.

On one CUDA or ROCm device, in a few minutes:
* bf16 training at world 1 of the 125M, 350M and 1B presets, a few steps each, with GEMM
  tuning off and then on (a fresh tuning cache each time): median step time after the first
  step, tokens/s, TFLOP/s, MFU against the data-sheet peak of the detected GPU
  (perfmodel/gpus.py gives each number's source), and peak allocated memory against
  perfmodel's prediction for the same run;
* the communication trace's clock (CUDA events on the compute stream) on a step with one
  asynchronous all-reduce in flight behind a burst of GEMMs: the trace's issue-to-wait span
  must match the burst's own device time, measured apart.

    python -m benchmarks.gpu_acceptance [--device cuda|cpu] [--presets 125M,350M,1B] [--steps 5]
        [--batch 8] [--micro-batch 1] [--out benchmarks/results/gpu_acceptance.json]

`--device cpu` runs the same code on small presets (a test does), against a bf16 GEMM timed
here instead of a data sheet; its memory column is the process's peak resident set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.comm import all_reduce_start
from axon.parallel.trace import Axis, CommTrace
from axon.runtime.trainer import Trainer
from axon.kernels import measure_gemm_tflops
from axon.kernels.timing import DeviceClock
from perfmodel.gpus import gpu_sheet
from perfmodel.memory import memory_per_device
from axon.spec.training import TrainingSetup

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_acceptance.json"
DTYPE = "bfloat16"
GIB = 2.0 ** 30


def peak_for(device: torch.device) -> tuple[float, str, str]:
    """(TFLOP/s, where it comes from, device name) the MFU column is measured against."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = gpu_sheet(name)
        if sheet is not None:
            return sheet.peak_tflops[DTYPE], f"{sheet.name} data sheet: {sheet.source}", name
        return measure_gemm_tflops(device, torch.bfloat16), "bf16 GEMM timed here (GPU not in perfmodel/gpus.py)", name
    return measure_gemm_tflops(device, torch.bfloat16), "bf16 GEMM timed here (no data sheet for a CPU)", "cpu"


def train_run(preset: str, tuning: bool, args, device: torch.device, peak: float) -> dict:
    """A few bf16 steps of `preset` at world 1; the first step (warm-up, tuning) is not timed."""
    with tempfile.TemporaryDirectory() as out_dir:
        config = build_config({"model": preset, "layout": {}, "out_dir": out_dir,
                               "train": {"steps": args.steps, "global_batch": args.batch,
                                         "micro_batch": args.micro_batch, "dtype": DTYPE, "lr": 3e-4,
                                         "gemm_tuning": tuning, "checkpoint_every": 0}})
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        grid = Grid(config.layout, 0)
        trainer = Trainer(config, grid, device, peak_tflops=peak)
        history = [trainer.step(step) for step in range(args.steps)]
        flops_per_step = trainer.flops_per_step
        tuner = trainer.gemm_tuner
        tuned = {"shapes": len(tuner.choices), "changed": sum(c.best != c.held for c in tuner.choices),
                 "extra_mib": tuner.peak_extra_bytes / 2**20} if tuner is not None else None
        measured = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else history[-1][
            "peak_memory_gb"]
        del trainer
        grid.destroy()
    shape = config.model
    setup = TrainingSetup(global_batch=args.batch, seq_len=shape.seq_len, micro_batch=args.micro_batch, dtype=DTYPE)
    micro, _ = setup.micro_batches(1, 1)
    predicted = sum(memory_per_device(shape, config.layout, setup, micro, shape.layers, True, True).values())
    timed = history[1:]
    step_s = statistics.median(m["step_time_s"] for m in timed)
    tflops = flops_per_step / step_s / 1e12
    return {"preset": preset, "gemm_tuning": tuning, "seq_len": shape.seq_len, "step_time_s": step_s,
            "tokens_per_s": args.batch * shape.seq_len / step_s, "tflops": tflops, "mfu": tflops / peak,
            "losses": [m["loss"] for m in history], "peak_memory_gib": measured,
            "memory_kind": "allocated" if device.type == "cuda" else "process peak RSS",
            "perfmodel_memory_gib": predicted, "tuned": tuned}


def collective_clock(device: torch.device, burst: int = 20) -> dict:
    """One asynchronous all-reduce (64 MiB) issued before a burst of GEMMs and waited after it:
    the trace's issue-to-wait span must equal the burst's device time, timed on its own."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        size = 4096 if device.type == "cuda" else 256  # a burst of a few ms either way
        a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        buffer = torch.ones(16 * 2**20, device=device)

        def compute():
            for _ in range(burst):
                torch.mm(a, a)

        compute()  # warm-up
        alone = statistics.median(DeviceClock(device).seconds(compute, 1) for _ in range(3))
        trace = CommTrace()
        trace.enabled = True
        if device.type == "cuda":
            trace.use_cuda_events()
        handle = all_reduce_start(buffer, Axis("data", dist.group.WORLD, 1, trace))
        compute()
        handle.wait()
        (event,) = trace.take()
    finally:
        dist.destroy_process_group()
    span = event.wait_start - event.issued
    return {"clock": "CUDA events" if device.type == "cuda" else "host", "burst_alone_s": alone,
            "trace_issue_to_wait_s": span, "trace_comm_s": event.completed - event.issued,
            "trace_exposed_s": event.completed - event.wait_start,
            "ordered": event.issued <= event.wait_start <= event.completed,
            "span_error": abs(span - alone) / alone}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", default=None, help="comma-separated; default 125M,350M,1B (cpu: tiny,1M)")
    parser.add_argument("--steps", type=int, default=5, help="steps per run; the first is not timed")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error(f"--steps must be at least 2 (the first step is not timed), got {args.steps}")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    presets = (args.presets or ("125M,350M,1B" if device.type == "cuda" else "tiny,1M")).split(",")
    peak, peak_source, device_name = peak_for(device)
    runs = [train_run(preset, tuning, args, device, peak) for preset in presets for tuning in (False, True)]
    clock = collective_clock(device)
    report = {"command": " ".join([sys.executable, "-m", "benchmarks.gpu_acceptance",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "device": device_name, "torch": torch.__version__, "dtype": DTYPE,
              "peak_tflops": peak, "peak_source": peak_source, "runs": runs, "collective_clock": clock}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    print(f"{report['device']}, torch {report['torch']}, {report['dtype']}; MFU against {report['peak_tflops']:.1f} "
          f"TFLOP/s ({report['peak_source']})")
    print(f"{'preset':>7} {'tuning':>6} {'step s':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'memory GiB':>10} {'perfmodel':>9} {'tuned shapes':>12}")
    for run in report["runs"]:
        tuned = run["tuned"]
        shapes = f"{tuned['changed']}/{tuned['shapes']} moved" if tuned else "-"
        print(f"{run['preset']:>7} {'on' if run['gemm_tuning'] else 'off':>6} {run['step_time_s']:>8.3f} "
              f"{run['tokens_per_s']:>10.0f} {run['tflops']:>8.2f} {run['mfu']:>6.1%} {run['peak_memory_gib']:>10.2f} "
              f"{run['perfmodel_memory_gib']:>9.2f} {shapes:>12}")
    c = report["collective_clock"]
    print(f"trace clock ({c['clock']}): burst of GEMMs alone {c['burst_alone_s'] * 1e3:.2f} ms, trace issue-to-wait "
          f"{c['trace_issue_to_wait_s'] * 1e3:.2f} ms ({c['span_error']:.0%} apart), all-reduce "
          f"{c['trace_comm_s'] * 1e3:.2f} ms of which exposed {c['trace_exposed_s'] * 1e3:.2f} ms; "
          f"{'ordered' if c['ordered'] else 'OUT OF ORDER'}")


if __name__ == "__main__":
    main()
