"""axon at world 1 against plain PyTorch on the same GPU: the gap, per preset, in one process.

Per preset (125M, 350M, 1B by default, bf16), one process trains two models from the same
weights on the same batches with the same math:
* axon: a Trainer at world 1 (a Grid of one rank), train.compile as --compile says, the
  micro-batch axon picks (train.micro_batch 0 unless --micro-batch is given);
* plain: axon/testing/reference_model.py's PlainLlama, `torch.compile(model.loss)` (forward and
  loss in one graph), autocast to the compute dtype (fp32 master weights, as axon keeps), fused
  AdamW, the same clipping, weight decay groups and constant lr; its batches are put on the
  device before its clock starts (its input costs it nothing; axon's is what InputAhead leaves).

Order: axon's warm-up steps alone (its peak memory, its compilation), then the plain model's
(likewise, on top of axon's resident memory, which is subtracted), then timed rounds of one
step each, the side that goes first alternating per round; each step is timed with the
device drained before and after. Then one more round under torch.profiler (kernel launches:
the runtime's launch calls on a GPU; on a CPU, top-level aten ops stand in for them) and one
with host syncs counted (CUDA: torch.cuda.set_sync_debug_mode("warn"), the warnings caught;
CPU: axon.testing.host_syncs.HostSyncs, the calls that would sync on a GPU).

Reported per preset and side: median step time over the timed steps, tokens/s, TFLOP/s and
MFU under the README's convention (6N + 12·L·h·s, no causal discount) and with the causal
discount (6N + 6·L·h·s), peak allocated memory against perfmodel's prediction for axon's run,
kernel launches and host syncs per step, the first step less the median (compilation,
autotuning, first allocations), the step-1 loss; and axon median / plain median. A preset that
runs out of device memory gets a row saying so, and the next preset runs.

    python -m benchmarks.gpu_speed                       # CUDA: 125M,350M,1B bf16, 20 timed steps
        [--presets 125M,350M] [--steps 20] [--warmup 3] [--batch 8] [--micro-batch 0]
        [--compile auto|on|off] [--plain-compile on|off] [--dtype bfloat16|float32]
        [--out benchmarks/results/gpu_speed.json]
    python -m benchmarks.gpu_speed --device cpu          # tiny,1M on the CPU, to
                                                         # benchmarks/results/gpu_speed_cpu.json

On a CPU the memory column is perfmodel's prediction only (the process's resident set holds
both models, the compiler and the interpreter: not comparable), and MFU is against a GEMM in
the run's dtype timed here.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from axon.config import build_config, micro_batch_plan
from axon.data.batches import shard_micro_batches, token_source
from axon.kernels import measure_gemm_tflops
from axon.parallel.full_tensor import full_parameters
from axon.parallel.grid import Grid
from axon.planning.micro_batch import micro_batch_for_device
from axon.runtime.trainer import Trainer
from axon.spec.flops import flops_per_token
from axon.spec.training import TrainingSetup
from axon.testing.host_syncs import HostSyncs
from axon.testing.reference_model import PlainLlama
from perfmodel.gpus import gpu_sheet
from perfmodel.memory import memory_per_device

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2.0 ** 30
COMPILE = {"auto": "auto", "on": True, "off": False}
# Runtime and driver calls that start one kernel (CUDA, Triton's driver launches, ROCm) or a graph.
LAUNCH_MARKERS = ("LaunchKernel", "LaunchCooperativeKernel", "cudaGraphLaunch", "hipGraphLaunch")
CPU_LAUNCH_PROXY = ("top-level aten ops per step (profiler events named aten::* with no aten:: ancestor; "
                    "inductor's fused C++ kernels are not aten ops and are not counted)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_for(device: torch.device, dtype: str) -> tuple[float, str, str]:
    """(TFLOP/s in the run's dtype, where it comes from, device name): the MFU denominator."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = gpu_sheet(name)
        if sheet is not None and dtype in sheet.peak_tflops:
            return sheet.peak_tflops[dtype], f"{sheet.name} data sheet, {dtype}: {sheet.source}", name
        return measure_gemm_tflops(device, getattr(torch, dtype)), f"{dtype} GEMM timed here (not in perfmodel/gpus.py)", name
    return measure_gemm_tflops(device, getattr(torch, dtype)), f"{dtype} GEMM timed here (no data sheet for a CPU)", "cpu"


class PlainSide:
    """PlainLlama trained as a PyTorch user would: compiled forward+loss, autocast, fused AdamW."""

    def __init__(self, config, grid, weights: dict, device: torch.device, compile_model: bool):
        self.config, self.grid, self.device = config, grid, device
        self.model = PlainLlama(config.model)
        self.model.load_state_dict(weights)
        self.model.to(device)
        t = config.train
        self.bf16 = t.dtype == "bfloat16"
        self.tokens = t.global_batch * config.model.seq_len
        decay = [p for p in self.model.parameters() if p.ndim == 2]  # matrices and the embedding, as axon
        no_decay = [p for p in self.model.parameters() if p.ndim != 2]  # norm gains
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            self.optimizer, self.fused = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=1e-8, fused=True), True
        except RuntimeError:  # no fused kernel for this device
            self.optimizer, self.fused = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=1e-8), False
        # model.loss, not model: torch.compile(model) would compile forward only, and loss calls
        # the uncompiled module's forward.
        self.loss = torch.compile(self.model.loss) if compile_model else self.model.loss
        self.source = token_source(config)  # its own reader: axon's is read on a background thread

    def batches(self, step: int) -> list:
        return shard_micro_batches(self.source, self.config, self.grid, step, self.device)

    def step(self, batches) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for ids, targets in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                # each micro-batch's mean weighted by its share of the step's tokens: the step's mean
                loss = self.loss(ids, targets) * (targets.numel() / self.tokens)
            loss.backward()
            loss_sum += loss.detach()
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        return float(loss_sum)  # the step's one host read, as axon's


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, fn's result), the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def launches(fn, device: torch.device) -> dict:
    """Kernel launches of one call of fn (on a CPU, the aten-op proxy, named as such)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    if device.type == "cuda":
        calls = sum(1 for e in events if any(m in e.name for m in LAUNCH_MARKERS))
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                      and not e.name.startswith(("Memcpy", "Memset")))
        return {"launches_per_step": calls, "device_kernels_per_step": kernels,
                "launch_kind": "kernel launch calls (" + ", ".join(LAUNCH_MARKERS) + ") per step"}

    def top_level(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    return {"launches_per_step": sum(1 for e in events if e.name.startswith("aten::") and top_level(e)),
            "device_kernels_per_step": None, "launch_kind": CPU_LAUNCH_PROXY}


def host_syncs(fn, device: torch.device, optimizer) -> tuple[list[str], int]:
    """What in one call of fn makes (on a GPU) or would make (on a CPU) the host wait for the device,
    and (CPU) how many reads inside optimizer.step were left out: a non-fused AdamW reads its step
    counters with .item(), and those live on the host on a GPU too, so they sync nothing there."""
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)], 0
    inside_optimizer = HostSyncs()
    with HostSyncs() as syncs:
        original = optimizer.step

        def step(*args, **kwargs):
            with syncs.not_counting(), inside_optimizer:
                return original(*args, **kwargs)

        optimizer.step = step  # an instance attribute: the class's step is back after the del
        try:
            fn()
        finally:
            del optimizer.step
    return list(syncs.calls), len(inside_optimizer.calls)


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def side_report(times: list[float], warmup: list[float], flops: dict, tokens: int, peak: float) -> dict:
    median = statistics.median(times)
    report = {"median_step_s": median, "step_times_s": times, "warmup_step_times_s": warmup,
              "first_step_minus_median_s": warmup[0] - median, "tokens_per_s": tokens / median}
    for name, per_step in flops.items():
        report[f"tflops_{name}"] = per_step / median / 1e12
        report[f"mfu_{name}"] = per_step / median / 1e12 / peak
    return report


def run_preset(preset: str, args, device: torch.device, peak: float) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        config = build_config({"model": preset, "layout": {}, "out_dir": out_dir,
                               "train": {"steps": args.warmup + args.steps + 2, "global_batch": args.batch,
                                         "micro_batch": args.micro_batch, "dtype": args.dtype, "lr": 3e-4,
                                         "schedule": "constant", "grad_clip": 1.0, "checkpoint_every": 0,
                                         "compile": COMPILE[args.compile]}})
        config, micro_why = micro_batch_for_device(config, device)  # as `axon train` picks it on this device
        grid = Grid(config.layout, 0)
        try:
            return {**compare(preset, config, grid, args, device, peak), "micro_batch_reason": micro_why}
        finally:
            grid.destroy()


def compare(preset: str, config, grid, args, device: torch.device, peak: float) -> dict:
    shape, cuda = config.model, device.type == "cuda"
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(config, grid, device, peak_tflops=peak)
    # The plain model's weights wait on the host while axon's memory is measured alone.
    weights = {name: t.detach().to("cpu", copy=True) for name, t in full_parameters(trainer.model, grid).items()}

    def axon_step(step):
        return lambda: trainer.step(step)["loss"]

    graphs = graphs_compiled()
    axon_warmup, axon_losses = [], []
    for step in range(args.warmup):
        seconds, loss = timed(axon_step(step), device)
        axon_warmup.append(seconds)
        axon_losses.append(loss)
    axon_graphs = graphs_compiled() - graphs
    axon_peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else None

    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    plain = PlainSide(config, grid, weights, device, args.plain_compile == "on")
    del weights
    graphs = graphs_compiled()
    plain_warmup, plain_losses = [], []
    for step in range(args.warmup):
        batches = plain.batches(step)
        seconds, loss = timed(lambda: plain.step(batches), device)
        plain_warmup.append(seconds)
        plain_losses.append(loss)
    plain_graphs = graphs_compiled() - graphs
    plain_peak = (torch.cuda.max_memory_allocated(device) - base) / GIB if cuda else None

    axon_times, plain_times = [], []
    for step in range(args.warmup, args.warmup + args.steps):
        batches = plain.batches(step)
        sides = [("axon", axon_step(step)), ("plain", lambda: plain.step(batches))]
        for name, fn in sides if step % 2 == 0 else sides[::-1]:
            seconds, loss = timed(fn, device)
            (axon_times if name == "axon" else plain_times).append(seconds)
            (axon_losses if name == "axon" else plain_losses).append(loss)

    step = args.warmup + args.steps
    batches = plain.batches(step)
    axon_launches, plain_launches = launches(axon_step(step), device), launches(lambda: plain.step(batches), device)
    batches = plain.batches(step + 1)
    axon_syncs, axon_optimizer_reads = host_syncs(axon_step(step + 1), device, trainer.optimizer)
    plain_syncs, plain_optimizer_reads = host_syncs(lambda: plain.step(batches), device, plain.optimizer)

    micro, count = micro_batch_plan(config)
    setup = TrainingSetup(global_batch=args.batch, seq_len=shape.seq_len, micro_batch=micro, dtype=args.dtype)
    predicted = sum(memory_per_device(shape, config.layout, setup, micro, shape.layers, True, True).values())
    tokens = args.batch * shape.seq_len
    readme = flops_per_token(shape) * tokens
    flops = {"readme": readme, "causal": readme - 6.0 * shape.layers * shape.hidden * shape.seq_len * tokens}
    axon = side_report(axon_times, axon_warmup, flops, tokens, peak)
    plain_report = side_report(plain_times, plain_warmup, flops, tokens, peak)
    for report, peak_gib, found, syncs, optimizer_reads, graphs_n, losses in (
            (axon, axon_peak, axon_launches, axon_syncs, axon_optimizer_reads, axon_graphs, axon_losses),
            (plain_report, plain_peak, plain_launches, plain_syncs, plain_optimizer_reads, plain_graphs, plain_losses)):
        report.update(found, peak_memory_gib=peak_gib, host_syncs_per_step=len(syncs), host_sync_calls=syncs,
                      optimizer_host_counter_reads=optimizer_reads, graphs_compiled=graphs_n, losses=losses)
    plain_report["optimizer"] = "AdamW fused" if plain.fused else "AdamW (no fused kernel on this device)"
    plain_report["compiled"] = args.plain_compile == "on"
    return {"preset": preset,
            "seq_len": shape.seq_len, "global_batch": args.batch, "micro_batch": micro, "micro_batches": count,
            "tokens_per_step": tokens, "flops_per_step": flops, "compile_setting": config.train.compile,
            "perfmodel_memory_gib": predicted,
            "memory_kind": "max allocated during the side's warm-up steps (the other side's resident memory "
                           "subtracted)" if cuda else "not measured: a CPU process's resident set is not comparable",
            "step1_loss": {"axon": axon_losses[0], "plain": plain_losses[0],
                           "abs_diff": abs(axon_losses[0] - plain_losses[0])},
            "axon": axon, "plain": plain_report,
            "ratio_axon_over_plain": axon["median_step_s"] / plain_report["median_step_s"],
            "median_pair_ratio": statistics.median(a / p for a, p in zip(axon_times, plain_times))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", default=None, help="comma-separated; default 125M,350M,1B (cpu: tiny,1M)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side; the first compiles")
    parser.add_argument("--batch", type=int, default=8, help="global batch in sequences")
    parser.add_argument("--micro-batch", type=int, default=0, help="0 = the micro-batch axon picks")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--compile", choices=tuple(COMPILE), default="auto", help="axon's train.compile")
    parser.add_argument("--plain-compile", choices=("on", "off"), default="on")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/gpu_speed.json (cpu: gpu_speed_cpu.json)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps and --warmup must be at least 1, got {args.steps} and {args.warmup}")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = args.out or RESULTS / ("gpu_speed.json" if device.type == "cuda" else "gpu_speed_cpu.json")
    presets = (args.presets or ("125M,350M,1B" if device.type == "cuda" else "tiny,1M")).split(",")
    peak, peak_source, device_name = peak_for(device, args.dtype)
    runs = []
    for preset in presets:
        try:
            runs.append(run_preset(preset, args, device, peak))
        except torch.cuda.OutOfMemoryError as error:
            runs.append({"preset": preset, "error": f"out of memory: {str(error).splitlines()[0]}"})
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {"command": " ".join([sys.executable, "-m", "benchmarks.gpu_speed",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "device": device_name, "torch": torch.__version__, "dtype": args.dtype,
              "peak_tflops": peak, "peak_source": peak_source, "warmup": args.warmup, "steps": args.steps,
              "flops_conventions": {"readme": "6N + 12·L·h·s per token, no causal discount (README, axon/spec/flops.py)",
                                    "causal": "6N + 6·L·h·s per token: attention scores with the causal discount"},
              "plain": "PlainLlama, torch.compile(model.loss)" if args.plain_compile == "on" else "PlainLlama, eager",
              "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out}")
    return report


def print_table(report: dict) -> None:
    print(f"{report['device']}, torch {report['torch']}, {report['dtype']}; {report['steps']} timed steps per side "
          f"after {report['warmup']} warm-up; MFU against {report['peak_tflops']:.3g} TFLOP/s ({report['peak_source']})")
    print("MFU readme: 6N + 12·L·h·s, no causal discount; MFU causal: 6N + 6·L·h·s; "
          "first-median: first step less the median (compilation, tuning, first allocations)")
    print(f"{'preset':>6} {'micro':>5} {'side':>5} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU readme':>10} "
          f"{'MFU causal':>10} {'mem GiB':>8} {'perfmodel':>9} {'launches':>8} {'syncs':>5} {'first-median s':>14} "
          f"{'step-1 loss':>11}")
    for run in report["runs"]:
        if "error" in run:
            print(f"{run['preset']:>6} {run['error']}")
            continue
        for name in ("axon", "plain"):
            s = run[name]
            memory = "-" if s["peak_memory_gib"] is None else f"{s['peak_memory_gib']:.2f}"
            print(f"{run['preset']:>6} {run['micro_batch']:>5} {name:>5} {s['median_step_s'] * 1e3:>9.2f} "
                  f"{s['tokens_per_s']:>10.0f} {s['tflops_readme']:>8.3g} {s['mfu_readme']:>10.1%} "
                  f"{s['mfu_causal']:>10.1%} {memory:>8} {run['perfmodel_memory_gib']:>9.2f} "
                  f"{s['launches_per_step']:>8} {s['host_syncs_per_step']:>5} "
                  f"{s['first_step_minus_median_s']:>14.2f} {s['losses'][0]:>11.6f}")
        print(f"{run['preset']:>6} axon/plain {run['ratio_axon_over_plain']:.3f} (ratio of medians), "
              f"{run['median_pair_ratio']:.3f} (median of per-round ratios); step-1 loss |diff| "
              f"{run['step1_loss']['abs_diff']:.2e}")
    launch_kinds = {s["launch_kind"] for run in report["runs"] if "error" not in run
                    for s in (run["axon"], run["plain"])}
    for kind in sorted(launch_kinds):
        print(f"launches: {kind}")


if __name__ == "__main__":
    main()
