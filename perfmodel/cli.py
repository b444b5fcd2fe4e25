"""`python -m perfmodel plan | explain | calibrate`: the model from a login node.

plan     ranks every layout of --gpus for a model, batch and machine (a table, or --json)
explain  one layout's breakdown: time per component, memory per component, link per axis
calibrate  measures this allocation and writes a machine profile (run under the launcher)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from perfmodel.collectives import PRICED_GROUPS, group_placement
from axon.spec.layout import AXES, Layout, parse_layout_text, sizes_text
from perfmodel.machine import ProfileError, load_machine
from axon.spec.shapes import PRESETS, ModelShape, preset
from perfmodel.predict import predict
from perfmodel.search import layout_problem, search
from axon.spec.training import OVERLAPS, TrainingSetup

SHAPE_FLAGS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")


class UsageError(ValueError):
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"a preset ({', '.join(PRESETS)}); --layers ... refine or replace it")
    for flag in SHAPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    parser.add_argument("--gpus", type=int, required=True, help="devices (ranks) in the job")
    parser.add_argument("--machine", required=True, help="profile name (perlmutter, frontier, alps, dgx-h100) or YAML")
    parser.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step")
    parser.add_argument("--seq", type=int, help="sequence length (default: the preset's)")
    parser.add_argument("--micro-batch", type=int, default=0, help="sequences per micro-batch per data x depth shard")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--recompute", default="none", choices=("none", "block"))
    parser.add_argument("--grad-reduce-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the data-parallel and depth gradient reductions (train.grad_reduce_dtype)")
    parser.add_argument("--overlap", default="all", help=f"comma list of {','.join(OVERLAPS)}, or all, or none")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perfmodel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="rank every layout of --gpus")
    _common(plan_parser)
    plan_parser.add_argument("--top", type=int, default=10)
    plan_parser.add_argument("--no-pipe", action="store_true", help="leave the pipe axis at 1")
    plan_parser.add_argument("--exhaustive", action="store_true",
                             help="price every layout at every rank order (the reference the default search is "
                                  "tested against; minutes at scale)")
    explain = commands.add_parser("explain", help="one layout's breakdown")
    _common(explain)
    explain.add_argument("--layout", required=True, help="e.g. data=8,depth=16,row=4,col=8[,pipe=2][,order=...]")
    commands.add_parser("calibrate", help="measure this allocation (python -m perfmodel calibrate -h)", add_help=False)
    return parser


def model_shape(args) -> tuple[ModelShape, str]:
    """The preset refined by the shape flags, or the shape the flags give; ModelShape checks it."""
    values = dataclasses.asdict(preset(args.model, "--model")) if args.model is not None else {}
    for flag in SHAPE_FLAGS:
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    missing = [f"--{f.replace('_', '-')}" for f in SHAPE_FLAGS if f not in values]
    if missing:
        raise UsageError(f"without --model, give the shape: {' '.join(missing)} are missing")
    values.setdefault("seq_len", args.seq or 2048)
    return ModelShape(**values), args.model or "custom"


def training_setup(args, shape: ModelShape) -> TrainingSetup:
    if args.overlap == "all":
        overlap = OVERLAPS
    elif args.overlap == "none":
        overlap = ()
    else:
        overlap = tuple(part.strip() for part in args.overlap.split(",") if part.strip())
    return TrainingSetup(global_batch=args.global_batch, seq_len=args.seq or shape.seq_len,
                         micro_batch=args.micro_batch, dtype=args.dtype, recompute=args.recompute, overlap=overlap,
                         grad_reduce_dtype=args.grad_reduce_dtype)


def order_text(layout: Layout) -> str:
    inner = [axis for axis in layout.order if getattr(layout, axis) > 1]
    return "/".join(inner) or "-"


def print_plan(result, shape_name, args, setup, seconds) -> None:
    print(f"perfmodel plan: {shape_name} on {args.gpus} x {args.machine}, global batch {setup.global_batch} x "
          f"{setup.seq_len} tokens, {setup.dtype}, recompute {setup.recompute}, overlap {','.join(setup.overlap) or 'none'}"
          + (f", gradients reduced in {setup.grad_reduce_dtype}" if setup.grad_reduce_dtype != "float32" else ""))
    ruled_out = result.ruled_out
    reasons = "; ".join(f"{n} by {why}" for why, n in sorted(ruled_out.items(), key=lambda kv: -kv[1]))
    print(f"{result.dividing} layouts ({result.fitting} fit in memory), ranked at their best rank order in {seconds:.2f} s "
          f"({result.priced} predictions)" + (f"; ruled out {sum(ruled_out.values())}: {reasons}" if ruled_out else ""))
    header = f"{'#':>3}  {'layout':<36} {'order (outer/inner)':<24} {'step s':>8} {'TFLOP/s':>8} {'MFU':>6} {'GiB':>6}  biggest cost"
    print(header)
    print("-" * len(header))
    for i, p in enumerate(result.predictions, 1):
        cost = p.biggest_cost if p.fits else f"does not fit: {p.why_not}"
        print(f"{i:>3}  {sizes_text(p.layout):<36} {order_text(p.layout):<24} {p.step_time_s:>8.3f} "
              f"{p.tflops_per_gpu:>8.1f} {p.mfu:>6.1%} {p.memory_gb_per_gpu:>6.1f}  {cost}")


def print_explain(prediction, shape_name, machine, setup) -> None:
    p, lay = prediction, prediction.layout
    print(f"perfmodel explain: {shape_name}, layout {sizes_text(lay)} (order {order_text(lay)}) on {machine.name}")
    print(f"  micro-batches: {p.micro_batches} of {p.micro_batch} sequence(s) per data x depth shard; "
          f"{setup.dtype}, recompute {setup.recompute}")
    print(f"  step {p.step_time_s:.4f} s, {p.tflops_per_gpu:.2f} TFLOP/s per GPU, MFU {p.mfu:.1%}")
    print("  time by component:")
    for name, seconds in sorted(p.breakdown.items(), key=lambda kv: -kv[1]):
        if seconds > 0:
            print(f"    {name:<22} {seconds:>10.4f} s  {seconds / p.step_time_s:>6.1%}")
    print(f"  memory per GPU {p.memory_gb_per_gpu:.2f} GiB" + ("" if p.fits else f" -- does not fit: {p.why_not}"))
    for name, gib in p.memory.items():
        print(f"    {name:<22} {gib:>10.3f} GiB")
    print("  links:")
    for axes in PRICED_GROUPS:
        place = group_placement(lay, axes, machine)
        if place.size > 1:
            where = ("inside a node" if place.intra
                     else f"across nodes, {place.nic_streams} streams share the busiest node's NICs"
                     + (f", {place.group_streams} rings the busiest dragonfly group's links" if place.group_streams
                        else ""))
            print(f"    {'+'.join(axes):<12} {place.size:>5} ranks, {where}, {place.bandwidth_gbs:.1f} GB/s per rank, "
                  f"{place.latency_us:.1f} us")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from perfmodel.calibrate import main as calibrate_main  # the only part that imports torch

        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        machine = load_machine(args.machine)
        shape, name = model_shape(args)
        setup = training_setup(args, shape)
        if args.command == "explain":
            layout = parse_layout_text(args.layout, "--layout")
            if layout.world_size != args.gpus:
                raise UsageError(f"--layout {sizes_text(layout)} has {layout.world_size} ranks, not --gpus {args.gpus}")
            problem = layout_problem(shape, layout, setup)
            if problem:
                raise UsageError(f"--layout {sizes_text(layout)}: {problem}")
            prediction = predict(shape, layout, machine, setup)
            if args.json:
                print(json.dumps(prediction.to_dict(), indent=1))
            else:
                print_explain(prediction, name, machine, setup)
            return 0
        if args.top < 1:
            raise UsageError(f"--top must be at least 1, got {args.top}")
        started = time.perf_counter()
        axes = tuple(a for a in AXES if a != "pipe") if args.no_pipe else AXES
        result = search(shape, args.gpus, machine, setup, axes, top=args.top, exhaustive=args.exhaustive)
        seconds = time.perf_counter() - started
        if not result.predictions:
            raise UsageError(f"no layout of {args.gpus} GPUs divides this model and batch: "
                             + "; ".join(f"{n} by {why}" for why, n in result.ruled_out.items()))
        if args.json:
            print(json.dumps([p.to_dict() for p in result.predictions], indent=1))
        else:
            print_plan(result, name, args, setup, seconds)
        return 0
    except (UsageError, ProfileError, ValueError) as err:
        print(f"perfmodel: error: {err}", file=sys.stderr)
        return 2
