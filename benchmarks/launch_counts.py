"""Kernel launches per layer per micro-batch and host syncs per step of axon's training step,
counted on CPU (issue 31: the before/after numbers where no GPU is lent).

axon's Trainer at world 1 (as tests/runtime/test_host_syncs_per_step.py builds it): model
preset tiny at seq_len 64, --dtype (bfloat16 by default), global batch 8 in micro-batches of 2
(4 micro-batches a step), per variant (eager: train.compile false; compiled: train.compile
true, torch.compile of the local math with inductor's C++ backend). Per variant the model is
built with L and 2L layers (L = the preset's, 2); each trains 2 warm-up steps, then:

* launches: one step under torch.profiler (CPU activity). Counted are the profiler's events
  inside that step that are (a) aten ops with no aten op above them (what the Python side,
  autograd's engine or a compiled graph's wrapper called), less those whose whole subtree is
  made of ops in NO_KERNEL, and (b) inductor's generated C++ kernels, one profiler event each
  (torch._inductor.config.cpp.enable_kernel_profile; named graph_<n>_cpp_fused_<ops>_<k>).
  NO_KERNEL are the ops that on a GPU launch no kernel: views and metadata (view, reshape
  when it is a view, transpose, slice, detach, ...), allocations without a fill (empty,
  empty_strided, ...), and dispatching wrappers (to, contiguous, ...) that launch only through
  a child (to and reshape count when they copy: the copy is a child outside the list). The
  list is a fixed one, written into the output. An op counts once however many kernels a GPU
  would give it (matmul is one, _foreach_norm one): a proxy for a GPU's launches, not a count
  of them. Reported per step for L and 2L layers, and per layer per micro-batch:
  (N(2L) - N(L)) / (L x micro-batches); also without optimizer.step's subtree (on a CPU AdamW
  runs one op per parameter and tensor; on GPUs axon uses fused AdamW), which is once a step.
* host syncs: one more step under axon.testing.host_syncs.HostSyncs, AdamW's step inside
  not_counting (its step counters are host values: reading them waits for no GPU), as the test.
  Compiled: that step runs the compiled functions eagerly (torch.compiler.set_stance
  "force_eager"): a dispatch mode cannot enter compiled code, and a fullgraph graph of local
  math holds no host read.

Self-contained (torch, axon.config, axon.parallel.grid, axon.runtime.trainer and
axon.testing.host_syncs only), so it also runs against a checkout from before train.compile,
where only --variants eager applies:

    flock /tmp/axon-cpu.lock .venv/bin/python benchmarks/launch_counts.py --variants eager,compiled
        [--dtype bfloat16|float32] [--out benchmarks/results/launch_counts.json]
    git worktree add /tmp/old 3e8cd88
    cd /tmp/old && PYTHONPATH=/tmp/old /work/main/.venv/bin/python /work/main/benchmarks/launch_counts.py \\
        --variants eager --out /tmp/launch_counts_3e8cd88.json
    cd /work/main && git worktree remove --force /tmp/old

The JSON records the commit of the checkout axon was imported from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile, record_function

import axon
from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.testing.host_syncs import HostSyncs

RESULTS = Path(__file__).resolve().parent / "results" / "launch_counts.json"
VARIANTS = ("eager", "compiled")
STEP_MARK = "launch_counts::step"
# aten ops that launch no kernel on a GPU by themselves: views and metadata, allocations without
# a fill, and wrappers that launch only through a child op (counted when that child is not here).
NO_KERNEL = frozenset(f"aten::{name}" for name in (
    "view", "_unsafe_view", "view_as", "reshape", "_reshape_alias", "as_strided", "t", "numpy_T", "transpose",
    "permute", "expand", "expand_as", "unsqueeze", "squeeze", "select", "slice", "narrow", "split",
    "split_with_sizes", "chunk", "unbind", "flatten", "unflatten", "detach", "detach_", "alias", "lift_fresh",
    "empty", "empty_strided", "empty_like", "to", "contiguous", "resolve_conj", "resolve_neg", "result_type"))
INDUCTOR_KERNEL = "cpp_fused"  # in the name of each kernel inductor's C++ backend generates


def run_config(preset: str, layers: int, dtype: str, variant: str, out_dir: str):
    raw = {"model": {"preset": preset, "seq_len": 64, "layers": layers},
           "train": {"steps": 8, "global_batch": 8, "micro_batch": 2, "lr": 1e-3, "seed": 3, "dtype": dtype,
                     "peak_tflops": 1.0},
           "out_dir": out_dir}
    config = build_config(raw)
    if hasattr(config.train, "compile"):  # train.compile exists: say which
        raw["train"]["compile"] = variant == "compiled"
        config = build_config(raw)
    elif variant == "compiled":
        raise SystemExit("this checkout of axon has no train.compile: run --variants eager")
    return config


def _inside_step(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == STEP_MARK:
            return True
        parent = parent.cpu_parent
    return False


def _has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _launches_kernel(event) -> bool:
    """Whether an aten op or one below it is outside NO_KERNEL."""
    return event.name not in NO_KERNEL or any(_launches_kernel(child) for child in event.cpu_children
                                              if child.name.startswith("aten::"))


def _in_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step#"):
            return True
        parent = parent.cpu_parent
    return False


def count_launches(trainer: Trainer, step: int) -> dict:
    """One step under the profiler: its launches, those in optimizer.step, and by name."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(STEP_MARK):  # what runs on other threads (the input thread) is left out
            trainer.step(step)
    names, optimizer = Counter(), 0
    for event in prof.profiler.function_events:
        if not _inside_step(event):
            continue
        if INDUCTOR_KERNEL in event.name:
            counted = True
        elif event.name.startswith("aten::") and not _has_aten_ancestor(event):
            counted = _launches_kernel(event)
        else:
            counted = False
        if counted:
            names["inductor C++ kernel" if INDUCTOR_KERNEL in event.name else event.name] += 1
            optimizer += _in_optimizer(event)
    total = sum(names.values())
    return {"launches": total, "optimizer_launches": optimizer, "launches_without_optimizer": total - optimizer,
            "by_name": dict(names.most_common())}


def count_host_syncs(trainer: Trainer, step: int, compiled: bool) -> list[str]:
    # A dispatch mode cannot enter compiled code: the compiled functions run eagerly for this step
    # (fullgraph graphs of pure local math, so no host read is hidden in them).
    stance = torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()
    with stance, HostSyncs() as syncs:
        update = trainer.optimizer.step

        def uncounted(*args, **kwargs):
            with syncs.not_counting():
                return update(*args, **kwargs)

        trainer.optimizer.step = uncounted  # an instance attribute: the class's step is back after the del
        try:
            trainer.step(step)
        finally:
            del trainer.optimizer.step
    return list(syncs.calls)


def measure(preset: str, layers: int, dtype: str, variant: str) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        config = run_config(preset, layers, dtype, variant, out_dir)
        trainer = Trainer(config, Grid(config.layout, 0), torch.device("cpu"))
        trainer.step(0)
        trainer.step(1)
        counted = count_launches(trainer, 2)
        syncs = count_host_syncs(trainer, 3, variant == "compiled")
        micro_batches = config.train.global_batch // config.train.micro_batch
        close = getattr(trainer, "close", None)
        if close is not None:
            close()
    return {"layers": layers, "micro_batches": micro_batches, **counted,
            "host_syncs_per_step": len(syncs), "host_sync_calls": syncs}


def per_layer_by_name(small: dict, large: dict, per: int) -> dict:
    """What the layers add, by op, per layer per micro-batch (most first)."""
    added = {name: (large.get(name, 0) - small.get(name, 0)) / per for name in {**small, **large}}
    return dict(sorted(((name, n) for name, n in added.items() if n), key=lambda item: (-item[1], item[0])))


def checkout_commit() -> str:
    where = Path(axon.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=where,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="eager,compiled", help="comma-separated: eager, compiled")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int, default=2, help="L: the run is made with L and 2L layers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if not variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants takes {', '.join(VARIANTS)}, got {args.variants!r}")
    inductor_config.cpp.enable_kernel_profile = True  # before anything compiles: one profiler event per kernel
    rows = []
    for variant in variants:
        small, large = (measure(args.preset, n, args.dtype, variant) for n in (args.layers, 2 * args.layers))
        per = args.layers * small["micro_batches"]
        rows.append({"variant": variant, "L": small, "2L": large,
                     "launches_per_layer_per_micro_batch": (large["launches"] - small["launches"]) / per,
                     "launches_per_layer_per_micro_batch_without_optimizer":
                         (large["launches_without_optimizer"] - small["launches_without_optimizer"]) / per,
                     "per_layer_per_micro_batch_by_name": per_layer_by_name(small["by_name"], large["by_name"], per)})
    report = {"command": " ".join([sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv]),
              "commit": checkout_commit(), "axon": str(Path(axon.__file__).resolve().parent),
              "torch": torch.__version__, "preset": args.preset, "seq_len": 64, "dtype": args.dtype,
              "global_batch": 8, "micro_batch": 2, "L": args.layers,
              "launches": ("per profiled step: top-level aten ops (no aten op above them) whose subtree has an op "
                           "outside no_kernel_ops, plus inductor's generated C++ kernels (cpp_fused)"),
              "no_kernel_ops": sorted(NO_KERNEL), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    print(f"axon {report['commit']} ({report['axon']}), torch {report['torch']}, CPU; preset {report['preset']} "
          f"seq_len {report['seq_len']} {report['dtype']}, global batch {report['global_batch']} in micro-batches "
          f"of {report['micro_batch']}; L = {report['L']}")
    L = report["L"]
    print(f"{'variant':>9} {'launches L':>10} {'launches 2L':>11} {'per layer per mb':>16} {'(no optimizer)':>14} "
          f"{'optimizer L/2L':>14} {'syncs/step':>10}")
    for row in report["runs"]:
        small, large = row["L"], row["2L"]
        print(f"{row['variant']:>9} {small['launches']:>10} {large['launches']:>11} "
              f"{row['launches_per_layer_per_micro_batch']:>16.2f} "
              f"{row['launches_per_layer_per_micro_batch_without_optimizer']:>14.2f} "
              f"{str(small['optimizer_launches']) + '/' + str(large['optimizer_launches']):>14} "
              f"{small['host_syncs_per_step']:>10}  {small['host_sync_calls']}")
    print(f"launches: {report['launches']}; per layer per mb = (N(2L) - N(L)) / ({L} x micro-batches)")
    print(f"no-kernel ops: {', '.join(name.removeprefix('aten::') for name in report['no_kernel_ops'])}")


if __name__ == "__main__":
    main()
