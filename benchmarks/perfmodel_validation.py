"""Is perfmodel right on this machine? Calibrate, then measure every layout and compare.

For each world size (8, then 4 ranks):
1. `torchrun --nproc-per-node N -m perfmodel calibrate --out results/machine_cpu_N.yaml --model M
   --seq S --micro-batch B/N`, the same launcher as training, so the profile sees N ranks
   sharing the cores; its whole-step reference is the model at one rank's share of the batch;
2. gloo spawns of N ranks build axon on every layout of N ranks the model divides, in groups
   of near-equal size, and run a group round-robin: each round one step of each layout, timed
   barrier to barrier, the max over ranks; rounds interleave so that the machine's drift hits
   every layout of a group alike; the first round is warm-up. Every spawn also runs the
   anchor, pure data parallelism, at most --group layouts in all: the machine drifts between
   spawns too (in two runs here the anchor's median per spawn spread over 11%, and one spawn
   ran 15% slow), so each spawn's times are scaled by the anchor's median over all spawns /
   its median in that spawn (the factor is kept per layout, `drift_scale`, next to the raw
   times). Groups are small and even because the models a spawn holds slow each other's
   steps, and unevenly: with 9 held, data=2 pipe=4 took 10% longer than with 3, data=8 4%
   (33 at once outgrew this machine's RAM; groups of 8 left data=8 alone in a spawn of its
   own and favoured it);
3. perfmodel predicts each layout from the profile alone.
Reported (perfmodel/validation.py scores it): predicted vs measured median step per layout,
Kendall tau and Spearman rank correlations, mean absolute percentage error, the worst error,
and the top-1 regret (measured time of the predicted best / the measured best), and the same
scores with the profile's `in_context_slowdown` or `oversubscription` set to 1, to show what
each contributes. Targets (issue 15): at 8 ranks tau >= 0.85, MAPE <= 10%, no layout off by
more than 25%, regret 1.00; at 4 ranks tau >= 0.8.

The results file holds the latest run, each world with the commit that measured it and its
profile's path. Before a new measurement overwrites it (and recalibrates those profiles), its
run moves to the end of the history file beside it (perfmodel_validation_history.json: a list
of runs, oldest first, each with its commit and its profiles' YAML embedded).

    .venv/bin/python -m benchmarks.perfmodel_validation [--model 10M] [--seq 128] [--batch 16]
        [--rounds 6] [--worlds 8 4] [--group 4] [--quick-calibration] [--profile FILE.yaml (skip calibrating)]
        [--repredict (keep the measured times and profiles of the last results; predict again)]
        [--history (with --repredict: predict every earlier run of the history again instead)]
        [--results FILE.json (default benchmarks/results/perfmodel_validation.json)]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from axon.spec.shapes import ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel.machine import load_machine
from perfmodel.validation import history_of, keep_in_history, layouts_for, measure, repredict, score

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def measure_worker(rank, world, port, spec, out):
    """Every layout of the world, round-robin; returns per layout the max-over-ranks step times."""
    import torch
    import torch.distributed as dist

    from axon.config import build_config
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    trainers = []
    for sizes in spec["layouts"]:
        config = build_config({"model": spec["model"], "layout": sizes,
                               "train": {"steps": spec["rounds"], "global_batch": spec["batch"], "lr": 1e-3}})
        trainers.append(Trainer(config, Grid(config.layout, rank), torch.device("cpu")))
    times = [[] for _ in trainers]
    for step in range(spec["rounds"]):
        for index, trainer in enumerate(trainers):
            dist.barrier()
            times[index].append(trainer.step(step)["step_time_s"])
    slowest = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step ends when its slowest rank does
    if rank == 0:
        Path(out).write_text(json.dumps(slowest.tolist()))
    dist.destroy_process_group()


def measure_group(world: int, spec: dict) -> list[list[float]]:
    import tempfile

    import torch.multiprocessing as mp

    from axon.runtime.bootstrap import free_port

    port = free_port()  # a fresh port per spawn: a reused one can hang the rendezvous
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        mp.spawn(measure_worker, args=(world, port, spec, out), nprocs=world)
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def calibrate(world: int, args) -> Path:
    """The profile, its whole-step reference being one rank's data-parallel share of the batch."""
    path = RESULTS / f"machine_cpu_{world}ranks.yaml"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", str(world), "-m", "perfmodel", "calibrate", "--out", str(path),
               "--model", args.model, "--seq", str(args.seq), "--micro-batch", str(max(1, args.batch // world))]
    subprocess.run(command + (["--quick"] if args.quick_calibration else []), check=True, cwd=ROOT)
    return path


def validate(world: int, args, shape: ModelShape, setup: TrainingSetup, commit: str) -> dict:
    profile = Path(args.profile) if args.profile else calibrate(world, args)
    layouts = layouts_for(shape, world, setup)
    spec = {"model": {**shape.__dict__}, "layouts": [lay.sizes() for lay in layouts],
            "rounds": args.rounds + 1, "batch": args.batch}
    timed, scales = measure(world, spec, args.group, measure_group)
    return {"world": world, "commit": commit, "profile": _from_root(profile),
            **score(load_machine(profile), shape, setup, layouts, timed, scales)}


def commit_of_tree() -> str:
    """The commit this tree is at, marked "+changes" when the code it runs differs from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "axon", "perfmodel",
                                  "benchmarks/perfmodel_validation.py"],
                           capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+changes" if dirty else "")


def _from_root(path: Path) -> str:
    """The path as the results file keeps it: from the repository root where it lies inside."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def print_result(r: dict) -> None:
    print(f"\n{r['world']} ranks, {r['layouts']} layouts, profile {r.get('profile', r.get('profile_file'))}")
    print(f"{'layout':<34} {'predicted ms':>13} {'measured ms':>12} {'error':>7}  biggest predicted cost")
    for row in sorted(r["rows"], key=lambda x: x["measured_s"]):
        name = " ".join(f"{a}={n}" for a, n in row["layout"].items() if n > 1)
        error = row["predicted_s"] / row["measured_s"] - 1
        print(f"{name:<34} {row['predicted_s'] * 1e3:>13.1f} {row['measured_s'] * 1e3:>12.1f} {error:>+7.0%}  "
              f"{row['biggest_cost']}")
    print(f"Kendall tau {r['kendall_tau']:.3f}, Spearman {r['spearman']:.3f}, MAPE {r['mape']:.1%}, "
          f"worst {r['worst_error']:+.0%}, "
          f"top-1 regret {r['top1_regret']:.3f} (predicted best {r['predicted_best']}, measured best "
          f"{r['measured_best']})")
    for name, w in r.get("without", {}).items():
        print(f"  with {name}: Kendall tau {w['kendall_tau']:.3f}, MAPE {w['mape']:.1%}, worst {w['worst_error']:+.0%}, "
              f"{w['over_25_percent']} layouts off by more than 25%")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="10M", help="preset of axon/spec/shapes.py")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="global batch in sequences")
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per layout (after one warm-up)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--quick-calibration", action="store_true")
    parser.add_argument("--profile", help="use this profile instead of calibrating")
    parser.add_argument("--group", type=int, default=4,
                        help="at most this many layouts measured together in one spawn, the anchor included")
    parser.add_argument("--repredict", action="store_true",
                        help="predict again from the last results' measured times and profiles (no measuring)")
    parser.add_argument("--history", action="store_true",
                        help="with --repredict: predict every earlier run kept in the history file again instead "
                             "(RESULTS_history.json beside --results)")
    parser.add_argument("--results", default=str(RESULTS / "perfmodel_validation.json"),
                        help="the results file written (and read back by --repredict)")
    args = parser.parse_args(argv)
    if args.history and not args.repredict:
        parser.error("--history goes with --repredict")
    shape = ModelShape(**{**preset(args.model).__dict__, "seq_len": args.seq})
    setup = TrainingSetup(global_batch=args.batch, seq_len=args.seq, dtype="float32")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.results)
    if args.history:
        return repredict_history(history_of(path))
    commit = commit_of_tree()
    previous = json.loads(path.read_text()) if path.exists() else {"worlds": []}
    last = previous if args.repredict else None
    if last:  # the measurement's commit stays; the predictions are this tree's
        results = {**({"commit": last["commit"]} if "commit" in last else {}), "predicted_at": commit}
    else:
        if keep_in_history(path, ROOT):
            print(f"kept the last run of {path} in {history_of(path)}")
        results = {"commit": commit}
    results.update(model=args.model, seq=args.seq, batch=args.batch, rounds=args.rounds, worlds=[])
    if last and "note" in last:
        results["note"] = last["note"]
    for world in args.worlds:
        if last:
            result = repredict(next(w for w in last["worlds"] if w["world"] == world), shape, setup, ROOT)
        else:
            result = validate(world, args, shape, setup, commit)
        print_result(result)
        results["worlds"].append(result)
    # Worlds not run this time keep their last results.
    results["worlds"] += [w for w in previous["worlds"] if w["world"] not in args.worlds]
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")
    return results


def repredict_history(history: Path) -> list[dict]:
    """Every kept run predicted again by this tree from its measured times and embedded profiles."""
    runs = json.loads(history.read_text())
    commit = commit_of_tree()
    for run in runs:
        shape = ModelShape(**{**preset(run["model"]).__dict__, "seq_len": run["seq"]})
        setup = TrainingSetup(global_batch=run["batch"], seq_len=run["seq"], dtype="float32")
        print(f"\n== the run measured at {run['commit']}" + (f" (kept as {run['kept_as']})" if "kept_as" in run else ""))
        run["worlds"] = [repredict(world, shape, setup, ROOT) for world in run["worlds"]]
        run["predicted_at"] = commit
        for world in run["worlds"]:
            print_result(world)
    history.write_text(json.dumps(runs, indent=1))
    print(f"\nwrote {history}")
    return runs


if __name__ == "__main__":
    main()
