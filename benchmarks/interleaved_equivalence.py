"""Layouts against the 1-process eager run, over 5 fp32 steps: by default interleaved 1F1B, every
factorization of 4 and 8 ranks with pipe >= 2 at layout.virtual_stages = 2 (the test suite runs
every 4-rank layout and a subset of 8: tests/distributed/test_interleaved.py); with
`--virtual-stages 1`, every factorization (the equivalence suite's layouts); with `--compile`,
trained with train.compile on (inductor; tests/model/test_compile.py runs three 4-rank layouts).

Relative errors per layout: the worst step's loss, the whole model's parameters
(||p - ref|| / ||ref|| over every tensor) and the worst single tensor. The model is the
equivalence tests' (hidden 96, 16 heads, 8 kv heads) with two blocks per stage (one per chunk).

    .venv/bin/python -m benchmarks.interleaved_equivalence [--worlds 4,8] [--virtual-stages 2]
    .venv/bin/python -m benchmarks.interleaved_equivalence --worlds 2,4,8 --virtual-stages 1 --compile \
        --out benchmarks/results/compile_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from benchmarks.compare_native import quiet, spawn
from axon.spec.layout import AXES, Layout, factorizations

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "interleaved_equivalence.json"
MODEL = {"hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}
STEPS = 5


def make_config(layers: int, layout: Layout, compiled: bool = False):
    return build_config({
        "model": {**MODEL, "layers": layers},
        "layout": {**{a: getattr(layout, a) for a in AXES}, "virtual_stages": layout.virtual_stages},
        "train": {"steps": STEPS, "global_batch": 8, "micro_batch": 1, "lr": 1e-3, "seed": 7, "grad_clip": 0.5,
                  "compile": compiled},
    })


def train(config, rank: int):
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    losses = [m["loss"] for m in trainer.fit()]
    params = full_parameters(trainer.model, grid)
    grid.destroy()
    return losses, params


def errors(losses, params, ref_losses, ref_params) -> dict:
    diff = sum(float((params[k] - r).square().sum()) for k, r in ref_params.items())
    norm = sum(float(r.square().sum()) for r in ref_params.values())
    return {"loss": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)),
            "parameters": (diff / norm) ** 0.5,
            "worst_tensor": max(float((params[k] - r).norm() / r.norm()) for k, r in ref_params.items())}


def worker(rank, world, port, layouts, compiled, references_path, out):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    references = torch.load(references_path) if rank == 0 else None
    rows = []
    for sizes in layouts:
        layout = Layout(**sizes)
        started = time.perf_counter()
        losses, params = train(make_config(2 * layout.pipe, layout, compiled), rank)
        if rank == 0:
            rows.append({"layout": sizes, **errors(losses, params, *references[2 * layout.pipe]),
                         "seconds": time.perf_counter() - started})
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default="4,8")
    parser.add_argument("--virtual-stages", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="train the layouts with train.compile on")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows = []
    print("world | data x pipe x depth x row x col | v | loss | parameters | worst tensor")
    for world in (int(w) for w in args.worlds.split(",")):
        layouts = [{**l.sizes(), "virtual_stages": args.virtual_stages}
                   for l in factorizations(world, AXES) if l.pipe >= 2 or args.virtual_stages == 1]
        references = {}
        for layers in sorted({2 * sizes["pipe"] for sizes in layouts}):
            references[layers] = train(make_config(layers, Layout()), 0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "references.pt"
            torch.save(references, path)
            measured = spawn(worker, world, layouts, args.compile, str(path))
        for row in measured:
            row["world"] = world
            rows.append(row)
            sizes = "x".join(str(row["layout"][a]) for a in AXES)
            print(f"{world} | {sizes} | {row['layout']['virtual_stages']} | {row['loss']:.1e} | "
                  f"{row['parameters']:.1e} | {row['worst_tensor']:.1e}", flush=True)
    worst = max(max(r["loss"], r["parameters"]) for r in rows)
    print(f"{len(rows)} layouts; worst loss or whole-model error {worst:.1e} (contract: 1e-5)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": MODEL, "steps": STEPS, "compile": args.compile, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
