"""The grid at 32,768 ranks: build time and the group-creating calls one rank makes.

Builds data 16 x pipe 4 x depth 8 x row 8 x col 8 as rank 20,001 under torch's fake
backend, counting `new_group` calls (and those whose group holds this rank) and
`split_group` calls. Two modes:

* plain: the backend as it is (gloo, fake, NCCL without a bound device): a non-member's
  new_group is local bookkeeping, no collective;
* split: the world reports a bound device, as NCCL with `device_id` does, where torch makes
  every new_group a split of the world's communicator that all ranks join; axon then makes
  each axis's groups with one `split_group` (on CPU the split builds this rank's group from
  the fake backend, so the count is exact and the time indicative).

With a bound device every new_group is a world-wide collective, so in the split mode the
world-wide count is new_group + split_group calls.

    .venv/bin/python -m benchmarks.grid_build [--repo PATH --label before]

--repo runs another checkout (e.g. a worktree of an older commit, where only "plain" applies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "grid_build.json"

PROBE = r"""
import json, sys, time
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
sys.path.insert(0, sys.argv[1])
from axon.parallel.grid import Grid
from axon.spec.layout import Layout
rank = 20_001
dist.init_process_group("fake", rank=rank, world_size=32_768, store=FakeStore())
real_new_group = dist.new_group
calls = {"new_group": 0, "new_group_as_member": 0, "split_group": 0}
def new_group(ranks, **kwargs):
    calls["new_group"] += 1
    calls["new_group_as_member"] += rank in ranks
    return real_new_group(ranks, **kwargs)
def split_group(split_ranks, **kwargs):
    calls["split_group"] += 1
    return real_new_group(next(g for g in split_ranks if rank in g), use_local_synchronization=True)
dist.new_group, dist.split_group = new_group, split_group
if sys.argv[2] == "split":
    import axon.parallel.groups as groups
    groups.splits_world = lambda: True
start = time.perf_counter()
Grid(Layout(data=16, pipe=4, depth=8, row=8, col=8), rank)
print(json.dumps({"build_s": time.perf_counter() - start, **calls}))
"""


def measure(repo: Path, mode: str, repeats: int, split_capable: bool) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE, str(repo), mode], capture_output=True, text=True,
                             timeout=300, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row = {key: runs[0][key] for key in ("new_group", "new_group_as_member", "split_group")}
    # With a device bound, code that can split takes the split path (the "split" row); code that
    # cannot makes every new_group a world-wide split.
    bound = mode == "split" or not split_capable
    row["world_wide_if_device_bound"] = row["new_group"] + row["split_group"] if bound else None
    row["build_s_median"] = statistics.median(r["build_s"] for r in runs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=str(ROOT))
    parser.add_argument("--label", default="after")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    repo = Path(args.repo)
    split_capable = (repo / "axon" / "parallel" / "groups.py").exists()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"world": 32_768, "rank": 20_001, "runs": []}
    results["runs"] = [r for r in results["runs"] if r["label"] != args.label]
    for mode in ("plain", "split") if split_capable else ("plain",):
        results["runs"].append({"label": args.label, "mode": mode, **measure(repo, mode, args.repeats, split_capable)})
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'code':8} {'mode':6} {'new_group':>10} {'as member':>10} {'split_group':>12} "
          f"{'world-wide*':>12} {'build s':>8}")
    for r in results["runs"]:
        print(f"{r['label']:8} {r['mode']:6} {r['new_group']:>10} {r['new_group_as_member']:>10} "
              f"{r['split_group']:>12} {str(r['world_wide_if_device_bound'] or '-'):>12} {r['build_s_median']:>8.2f}")
    print("* group-creating collectives over the whole world per rank when a device is bound (NCCL);\n"
          "  '-': with a bound device this code takes the split path instead; without one nothing is world-wide")


if __name__ == "__main__":
    main()
