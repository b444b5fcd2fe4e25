"""axon dry-run at target scale: Llama 3.1 405B on 16,384 and 32,768 ranks.

Each point runs `python -m axon dry-run` in a fresh process (wall time includes start-up),
with an explicit five-axis layout and with `layout: auto` on a named profile, and records
its wall time and, per built rank, memory and collective agreement with perfmodel.

    .venv/bin/python -m benchmarks.dry_run_scale [--machine frontier] [--worlds 16384 32768]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dry_run_scale.json"
# Llama 3.1 405B pre-training: 2,048 sequences of 8,192 tokens (16M tokens) per step, bf16.
CONFIG = """model: 405B
train: {global_batch: 2048, micro_batch: 1, dtype: bfloat16, recompute: block}
"""
EXPLICIT = {16384: "layout.data=8 layout.pipe=8 layout.depth=4 layout.row=8 layout.col=8",
            32768: "layout.data=16 layout.pipe=8 layout.depth=4 layout.row=8 layout.col=8"}


def run_point(config: Path, world: int, sets: list[str]) -> dict:
    argv = [sys.executable, "-m", "axon", "dry-run", str(config), "--world", str(world), "--json"]
    for item in sets:
        argv += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode:
        return {"world": world, "sets": sets, "wall_s": wall, "error": done.stderr.strip().splitlines()[-1]}
    ranks = json.loads(done.stdout)
    return {"world": world, "sets": sets, "wall_s": wall, "ranks": ranks}


def summary(point: dict) -> list[str]:
    if "error" in point:
        return [f"{point['world']:>6} {' '.join(point['sets']):58} {point['wall_s']:6.1f}  error: {point['error']}"]
    lines = []
    for r in point["ranks"]:
        c = r["coords"]
        layout = f"{point['world']:>6} {' '.join(point['sets']):58}"
        lines.append(f"{layout} {point['wall_s']:6.1f} {r['rank']:>6} {c['pipe']:>3} "
                     f"{r['memory_bytes']['total'] / 2**30:8.2f} {r['perfmodel_memory_bytes']['total'] / 2**30:8.2f} "
                     f"{r['memory_diff_percent']['total']:+7.1f}% {r['memory_diff_percent']['activations']:+7.1f}% "
                     f"{'yes' if r['collectives_agree'] else 'NO':>5} {r['collective_bytes_diff_percent']:+6.1f}%")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machine", default="frontier", help="profile for the layout: auto points")
    parser.add_argument("--worlds", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "405b.yaml"
        config.write_text(CONFIG)
        for world in args.worlds:
            points.append(run_point(config, world, EXPLICIT[world].split()))
            points.append(run_point(config, world, ["layout=auto", f"layout_machine={args.machine}"]))
    Path(args.out).write_text(json.dumps({"model": "405B", "config": CONFIG, "points": points}, indent=1) + "\n")
    print(f"{'world':>6} {'layout':58} {'wall s':>6} {'rank':>6} {'pp':>3} {'dry GiB':>8} {'pm GiB':>8} "
          f"{'total':>8} {'activ.':>8} {'colls':>5} {'bytes':>7}")
    for point in points:
        for line in summary(point):
            print(line)
    print("total / activ.: perfmodel's memory against the dry run's, (perfmodel - dry run) / dry run; colls: every "
          "(op, axis, bytes) of the step as often as perfmodel prices it; bytes: the step's collective bytes")


if __name__ == "__main__":
    main()
