"""Checkpoint save and load: wall time and peak host memory per rank.

Each case builds the trainer on N gloo processes, fills the AdamW state (step, exp_avg,
exp_avg_sq) directly instead of training, then times `axon.checkpoint.save` and
`axon.checkpoint.load` (a load verifies the shard files' sha256 and fills every rank's
parameters and moments). Host memory per rank: the peak RSS is reset before the call
(`/proc/self/clear_refs` 5) and VmHWM read after it; "extra" is the peak minus the RSS
just before, "peak" the absolute high-water mark. Times are the slowest rank's, median
over the repeats; memory is the largest over ranks and repeats. A load replaces AdamW
moments that are already there, so its "extra" is what loading itself holds (slices read,
files mapped, the old and new moment of one parameter), not the moments. Loads read files
the save just wrote, so they come from the page cache (a warm read), as on a node that
resumes right after a save.

Cases:
* local: the main job, axon/configs/local.yaml (preset 1M, depth 2 x col 2, 4 ranks);
* 1B: the 1B preset's widths (hidden 2048, ffn 8192, 32 heads, 8 kv heads) at depth 8 on
  8 ranks, fp32. The full preset (16 layers, vocab 128256, untied head: 1.5e9 parameters,
  18 GB of weights and moments) does not fit this 23 GiB machine together with the whole
  per-rank copy a save used to make, so --layers and --vocab cut it down (recorded in the
  results).

    .venv/bin/python -m benchmarks.checkpoint_io --code after [--cases local,1B] [--layers 4 --vocab 32768]

--code labels the run ("before": the code before streaming, run from a worktree of that
commit; "after": this tree); runs with another label already in the results file are kept,
so both appear in the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from axon import checkpoint
from axon.config import load_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from benchmarks.compare_native import quiet, spawn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "checkpoint_io.json"
MIB = 2**20


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measured(fn):
    """(result, seconds, extra MiB, peak MiB, file MiB) of fn() on this rank; every rank starts
    together. "file": how much more of the RSS is mapped file pages (page cache) when fn returns."""
    dist.barrier()
    before, file_before = status_kib("VmRSS"), status_kib("RssFile")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    return result, seconds, (peak - before) / 1024, peak / 1024, (status_kib("RssFile") - file_before) / 1024


def fill_adam_state(trainer) -> None:
    """AdamW state as after some steps, without running one (a 1B step is minutes on CPU)."""
    generator = torch.Generator().manual_seed(trainer.grid.rank)
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            trainer.optimizer.state[param] = {
                "step": torch.tensor(10.0),
                "exp_avg": torch.randn(param.shape, generator=generator) * 1e-3,
                "exp_avg_sq": torch.rand(param.shape, generator=generator) * 1e-6,
            }


def run_rank(rank, world, port, case, args, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    config = load_config(case["config"], case["overrides"])
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    fill_adam_state(trainer)
    rows = []
    for repeat in range(args.repeats):
        path, save_s, save_extra, save_peak, _ = measured(lambda: checkpoint.save(trainer, repeat + 1, keep=1))
        reader = checkpoint.CheckpointReader(path)
        reader.check_files()
        _, load_s, load_extra, load_peak, load_file = measured(lambda: checkpoint.load(trainer, reader))
        del reader  # closes its open shard files before the next save replaces them
        rows.append({"save_s": save_s, "load_s": load_s, "save_extra_mib": save_extra, "save_peak_mib": save_peak,
                     "load_extra_mib": load_extra, "load_peak_mib": load_peak, "load_file_mib": load_file})
    files = sorted(Path(path).glob("ranks_*/rank_*.safetensors"))
    shapes = [info["global_shape"] for info in json.loads((Path(path) / "meta.json").read_text())["tensors"].values()]
    everyone = [None] * world
    dist.all_gather_object(everyone, rows)  # a benchmark's bookkeeping, not the code under test
    if rank == 0:
        Path(out).write_text(json.dumps({"ranks": everyone, "file_bytes": [f.stat().st_size for f in files],
                                         "parameters": sum(math.prod(s) for s in shapes)}))
    dist.destroy_process_group()


def summarize(case: dict, raw: dict, code: str, repeats: int) -> dict:
    ranks = raw["ranks"]  # ranks[r][k]: rank r, repeat k
    slowest = lambda key: statistics.median(max(r[k][key] for r in ranks) for k in range(repeats))  # noqa: E731
    largest = lambda key: max(row[key] for r in ranks for row in r)  # noqa: E731
    per_rank = lambda key: [max(row[key] for row in r) for r in ranks]  # noqa: E731
    return {
        "case": case["name"], "code": code, "commit": case["commit"], "world": case["world"],
        "overrides": [o for o in case["overrides"] if not o.startswith("out_dir=")], "parameters": raw["parameters"], "repeats": repeats,
        "checkpoint_bytes": sum(raw["file_bytes"]), "largest_file_bytes": max(raw["file_bytes"]),
        "save_s": slowest("save_s"), "load_s": slowest("load_s"),
        "save_extra_mib": largest("save_extra_mib"), "save_peak_mib": largest("save_peak_mib"),
        "load_extra_mib": largest("load_extra_mib"), "load_peak_mib": largest("load_peak_mib"),
        "load_file_mib": largest("load_file_mib"),
        "per_rank": {key: per_rank(key) for key in ("save_extra_mib", "save_peak_mib", "load_extra_mib",
                                                     "load_peak_mib", "load_file_mib")},
    }


def commit_of_tree() -> str:
    """The commit this tree is at, marked "+changes" when the checkpoint code differs from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "axon/checkpoint", "axon/parallel/comm.py"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def cases(args, scratch: Path) -> list[dict]:
    commit = commit_of_tree()
    local = {"name": "local", "world": 4, "config": str(ROOT / "axon" / "configs" / "local.yaml"),
             "overrides": ["data.source=synthetic"]}
    big = {"name": "1B", "world": 8, "config": None,
           "overrides": ["model=1B", f"model.layers={args.layers}", f"model.vocab={args.vocab}", "layout.depth=8"]}
    chosen = [c for c in (local, big) if c["name"] in args.cases.split(",")]
    for case in chosen:
        case["overrides"] = case["overrides"] + [f"out_dir={scratch / case['name']}"]
        case["commit"] = commit
    return chosen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", required=True, help="label of the code measured: before or after")
    parser.add_argument("--cases", default="local,1B")
    parser.add_argument("--layers", type=int, default=4, help="1B case: transformer blocks (the preset has 16)")
    parser.add_argument("--vocab", type=int, default=32768, help="1B case: vocabulary (the preset has 128256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="where checkpoints are written")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="axon_ckpt_io_", dir=args.scratch))
    out = Path(args.out)
    previous = json.loads(out.read_text())["runs"] if out.is_file() else []
    runs = []
    try:
        for case in cases(args, scratch):
            raw = spawn(run_rank, case["world"], case, args)
            runs.append(summarize(case, raw, args.code, args.repeats))
            shutil.rmtree(scratch / case["name"], ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    replaced = {(r["case"], r["code"]) for r in runs}
    runs = [r for r in previous if (r["case"], r["code"]) not in replaced] + runs
    runs.sort(key=lambda r: (r["case"] != "local", r["case"], r["code"] != "before"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cores": os.cpu_count(), "runs": runs}, indent=1))
    print(f"{'case':<6} {'code':<7} {'ranks':>5} {'ckpt MiB':>9} {'save s':>7} {'load s':>7} "
          f"{'save extra':>10} {'save peak':>9} {'load extra':>10} {'load peak':>9}   (MiB per rank, largest rank)")
    for r in runs:
        print(f"{r['case']:<6} {r['code']:<7} {r['world']:>5} {r['checkpoint_bytes'] / MIB:>9.1f} {r['save_s']:>7.2f} "
              f"{r['load_s']:>7.2f} {r['save_extra_mib']:>10.0f} {r['save_peak_mib']:>9.0f} "
              f"{r['load_extra_mib']:>10.0f} {r['load_peak_mib']:>9.0f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
