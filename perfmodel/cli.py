"""`python -m perfmodel plan | explain | calibrate`: the model from a login node.

plan     ranks every layout of --gpus for a model, batch and machine (a table, or --json); when
         none fits in memory, one line saying what would fit, and exit status 2
explain  one layout's breakdown: time per component, memory per component, link per axis
calibrate  measures this allocation and writes a machine profile (run under the launcher)

plan and explain read the run from flags or from the run's own config (--config RUN.yaml
[--set KEY=VALUE ...], as `axon train` reads it); either way, what is not given is the
config schema's default (axon.spec.config_schema), as for `axon train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from axon.spec.config_file import PlannedRun, planned_run, read_mapping, setup_from_sections
from axon.spec.config_schema import OverlapSection, TrainConfig
from axon.spec.layout import AXES, Layout, parse_layout_text, sizes_text
from axon.spec.sections import FieldError
from axon.spec.shapes import PRESETS, ModelShape, preset
from axon.spec.training import OVERLAPS
from perfmodel.collectives import PRICED_GROUPS, group_placement
from perfmodel.machine import ProfileError, load_machine
from perfmodel.predict import Prediction, predict
from perfmodel.search import layout_problem, search
from perfmodel.suggest import remedy, shortfall

SHAPE_FLAGS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")
# The defaults of what a run config says are the schema's, axon train's: one copy (axon.spec.config_schema).
TRAIN, OVERLAP = TrainConfig(), OverlapSection()
# The flags a run config gives instead (with --config, `--set KEY=VALUE` overrides it), and their keys.
CONFIG_KEYS = {"model": "model.preset", **{flag: f"model.{flag}" for flag in SHAPE_FLAGS}, "seq": "model.seq_len",
               "global_batch": "train.global_batch", "micro_batch": "train.micro_batch", "dtype": "train.dtype",
               "recompute": "train.recompute", "grad_reduce_dtype": "train.grad_reduce_dtype",
               "overlap": "overlap.all_reduce (and the other overlap switches)"}
# The flag of each TrainingSetup field (its FieldError names the field).
SETUP_FLAGS = {"global_batch": "--global-batch", "seq_len": "--seq", "micro_batch": "--micro-batch",
               "dtype": "--dtype", "recompute": "--recompute", "grad_reduce_dtype": "--grad-reduce-dtype",
               "overlap": "--overlap"}


class UsageError(ValueError):
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a run config, the YAML `axon train` takes: the model, batch, length, "
                                         "dtype, recompute and overlaps come from it (and the GPU count from an "
                                         "explicit layout, the machine from layout_machine)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config: override a config key, as `axon train --set` (repeatable)")
    parser.add_argument("--model", help=f"a preset ({', '.join(PRESETS)}); --layers ... refine or replace it")
    for flag in SHAPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    parser.add_argument("--gpus", type=int, help="devices (ranks) in the job (with --config, default: its "
                                                 "layout's product)")
    parser.add_argument("--machine", help="profile name (perlmutter, frontier, alps, dgx-h100) or YAML (with "
                                          "--config, default: its layout_machine)")
    parser.add_argument("--global-batch", type=int, help="sequences per optimizer step")
    parser.add_argument("--seq", type=int, help="sequence length (default: the preset's)")
    parser.add_argument("--micro-batch", type=int, help="sequences per micro-batch per data x depth shard "
                                                        f"(default: train.micro_batch's, {TRAIN.micro_batch}: automatic)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help=f"default: train.dtype's, {TRAIN.dtype}")
    parser.add_argument("--recompute", choices=("none", "block"), help=f"default: train.recompute's, {TRAIN.recompute}")
    parser.add_argument("--grad-reduce-dtype", choices=("float32", "bfloat16"),
                        help="dtype of the data-parallel and depth gradient reductions (default: "
                             f"train.grad_reduce_dtype's, {TRAIN.grad_reduce_dtype})")
    parser.add_argument("--overlap", help=f"comma list of {','.join(OVERLAPS)}, or all, or none (default: the "
                                          f"overlap section's, all)")
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
    explain.add_argument("--layout", help="e.g. data=8,depth=16,row=4,col=8[,pipe=2][,order=...] (with --config, "
                                          "default: its layout)")
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


def overlap_section(text: str | None) -> OverlapSection:
    """--overlap as the overlap section: its switches from the flag, the rest the schema's."""
    if text is None or text == "all":
        return OVERLAP
    names = () if text == "none" else tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(names) - set(OVERLAPS))
    if unknown:
        raise UsageError(f"--overlap names unknown overlap(s) {', '.join(unknown)}; known: {', '.join(OVERLAPS)}")
    return dataclasses.replace(OVERLAP, **{name: name in names for name in OVERLAPS})


def run_from_flags(args) -> PlannedRun:
    """The run the flags describe, every setting they leave out the schema's default (axon train's)."""
    if args.overrides:
        raise UsageError("--set overrides a run config's key: give --config too")
    if args.global_batch is None:
        raise UsageError("give --global-batch (sequences per optimizer step), or --config with a run config")
    shape, name = model_shape(args)
    given = {field: getattr(args, field) for field in ("global_batch", "micro_batch", "dtype", "recompute",
                                                        "grad_reduce_dtype") if getattr(args, field) is not None}
    try:
        setup = setup_from_sections(dataclasses.replace(TRAIN, **given), overlap_section(args.overlap),
                                    args.seq or shape.seq_len)
    except FieldError as err:
        raise UsageError(f"{SETUP_FLAGS[err.field]} {err.rule}") from None
    return PlannedRun(shape, name, None, setup, "")


def run_from_config(args) -> PlannedRun:
    """The run a config file (with --set) describes, read as axon train reads it."""
    given = [flag for flag in CONFIG_KEYS if getattr(args, flag) is not None]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} with --config: the config gives it; override it with "
                         f"--set {CONFIG_KEYS[given[0]].split(' ')[0]}=VALUE")
    return planned_run(read_mapping(args.config, args.overrides))


def gpus_and_machine(args, run: PlannedRun) -> tuple[int, str]:
    """--gpus, else the config's explicit layout's ranks; --machine, else the config's layout_machine."""
    gpus = args.gpus if args.gpus is not None else run.layout.world_size if run.layout is not None else None
    if gpus is None:
        raise UsageError("give --gpus" + (" (the config's layout is auto)" if args.config else ""))
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {gpus}")
    machine = args.machine or run.machine
    if not machine:
        raise UsageError("give --machine (perlmutter, frontier, alps, dgx-h100, or a profile YAML)"
                         + (", or layout_machine in the config (with layout: auto)" if args.config else ""))
    return gpus, machine


def setting_text(args):
    """How this command line would give a setting: a flag, or with --config a --set."""
    if args.config:
        return lambda name, value: f"--set train.{name}={value}"
    return lambda name, value: f"--{name.replace('_', '-')} {value}"


def order_text(layout: Layout) -> str:
    inner = [axis for axis in layout.order if getattr(layout, axis) > 1]
    return "/".join(inner) or "-"


def print_plan(result, run: PlannedRun, gpus: int, machine_name: str, args, seconds, own=None) -> None:
    setup = run.setup
    print(f"perfmodel plan: {run.model_name}" + (f" ({args.config})" if args.config else "")
          + f" on {gpus} x {machine_name}, global batch {setup.global_batch} x {setup.seq_len} tokens"
          + (f", micro-batch {setup.micro_batch}" if setup.micro_batch else "")
          + f", {setup.dtype}, recompute {setup.recompute}, overlap {','.join(setup.overlap) or 'none'}"
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
    if own is not None:
        best = result.predictions[0].step_time_s
        print(f"the config's layout, {sizes_text(own.layout)} (order {order_text(own.layout)}): {own.step_time_s:.3f} s "
              f"per step ({own.step_time_s / best:.2f} x the best), {own.memory_gb_per_gpu:.1f} GiB per GPU"
              + ("" if own.fits else f": does not fit: {own.why_not}"))


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


def config_layout(run: PlannedRun, gpus: int, machine, axes) -> Prediction | None:
    """The prediction for the config's own layout, where it has one of this GPU count that runs."""
    lay = run.layout
    if lay is None or lay.world_size != gpus or any(getattr(lay, a) > 1 for a in AXES if a not in axes):
        return None
    return None if layout_problem(run.shape, lay, run.setup) else predict(run.shape, lay, machine, run.setup)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        from perfmodel.calibrate import main as calibrate_main  # the only part that imports torch

        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        run = run_from_config(args) if args.config else run_from_flags(args)
        gpus, machine_name = gpus_and_machine(args, run)
        machine = load_machine(machine_name)
        shape, name, setup = run.shape, run.model_name, run.setup
        if args.command == "explain":
            if args.layout is None and run.layout is None:
                raise UsageError("give --layout" + (" (the config's layout is auto)" if args.config else ""))
            layout = parse_layout_text(args.layout, "--layout") if args.layout is not None else run.layout
            if layout.world_size != gpus:
                raise UsageError(f"--layout {sizes_text(layout)} has {layout.world_size} ranks, not --gpus {gpus}")
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
        result = search(shape, gpus, machine, setup, axes, top=args.top, exhaustive=args.exhaustive)
        seconds = time.perf_counter() - started
        if not result.predictions:
            raise UsageError(f"no layout of {gpus} GPUs divides this model and batch: "
                             + "; ".join(f"{n} by {why}" for why, n in result.ruled_out.items()))
        if not result.fitting:
            short = shortfall(shape, gpus, machine, setup, axes)
            line = (f"no layout of {name} on {gpus} x {machine_name} fits in memory: "
                    + remedy(short, setting_text(args)))
            if args.json:
                print(json.dumps({"error": line, **short.to_dict()}, indent=1))
            print(f"perfmodel plan: error: {line}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps([p.to_dict() for p in result.predictions], indent=1))
        else:
            print_plan(result, run, gpus, machine_name, args, seconds, config_layout(run, gpus, machine, axes))
        return 0
    except (UsageError, ProfileError, ValueError) as err:
        print(f"perfmodel {args.command}: error: {err}", file=sys.stderr)
        return 2
