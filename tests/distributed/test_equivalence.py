"""Serial equivalence: every layout trains exactly like the 1-process run (DESIGN §4)."""

from __future__ import annotations

import pytest
import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout, factorizations
from axon.testing.runs import relative_errors
from axon.testing.spawn import run_distributed

STEPS = 5
# hidden 96 = 16 heads x 6 with 8 kv heads (GQA); every split size up to 8 divides it.
MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}
# Pipe layouts use one block per stage, so a 4-stage layout runs a 4-block model.
STAGED_MODELS = {p: {**MODEL, "layers": p} for p in (4, 8)}
# Odd sizes, so depth shards end in padding.
ODD_MODEL = {"layers": 1, "hidden": 98, "heads": 7, "kv_heads": 7, "ffn": 75, "vocab": 131, "seq_len": 12}
AXES = ("data", "pipe", "depth", "row", "col")


def make_config(model: dict, layout: Layout, micro_batch: int = 0):
    return build_config({
        "model": model,
        "layout": {axis: getattr(layout, axis) for axis in AXES},
        "train": {"steps": STEPS, "global_batch": 8, "micro_batch": micro_batch, "lr": 1e-3, "seed": 7,
                  "grad_clip": 0.5},
    })


def train_and_gather(config, rank: int, device=torch.device("cpu")):
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, device)
    losses = [m["loss"] for m in trainer.fit()]
    params = full_parameters(trainer.model, grid)
    grid.destroy()
    return losses, params


def run_layouts(rank, world, cases):
    out = []
    for model, layout, micro in cases:
        losses, params = train_and_gather(make_config(model, layout, micro), rank)
        out.append((losses, params if rank == 0 else None))
    return out


def layouts_for(world: int):
    cases = []
    for layout in factorizations(world, AXES):
        shards = layout.data * layout.depth
        if layout.pipe == 1:
            micro = max(1, 8 // shards // 2)  # two micro-batches per shard: gradient accumulation too
        else:
            micro = 1  # the most micro-batches: 1F1B reaches its steady state, or m < stages
        cases.append((STAGED_MODELS.get(layout.pipe, MODEL), layout, micro))
    return cases


@pytest.fixture(scope="module")
def references():
    refs = {}
    for model in (MODEL, ODD_MODEL, *STAGED_MODELS.values()):
        refs[id(model)] = train_and_gather(make_config(model, Layout()), 0)
    return refs


@pytest.mark.parametrize("world", [2, 4, 8])
def test_every_layout_matches_one_process(world, references):
    cases = layouts_for(world)
    if world == 4:
        cases.append((ODD_MODEL, Layout(depth=4), 0))
        cases.append((ODD_MODEL, Layout(data=2, depth=2), 1))
    results = run_distributed(world, run_layouts, cases)[0]
    report = []
    for (model, layout, _), (losses, params) in zip(cases, results):
        ref_losses, ref_params = references[id(model)]
        name = f"{layout.data}x{layout.pipe}x{layout.depth}x{layout.row}x{layout.col}"
        report.append((name, *relative_errors(losses, params, ref_losses, ref_params)))
    print("\nworld {world}: data x pipe x depth x row x col | loss | parameters | worst tensor".format(world=world))
    print("\n".join(f"{name} | {loss:.1e} | {model:.1e} | {tensor:.1e}" for name, loss, model, tensor in report))
    for name, loss, model, tensor in report:
        assert loss < 1e-5 and model < 1e-5 and tensor < 1e-4, (
            f"layout data x pipe x depth x row x col = {name}: loss error {loss:.2e}, "
            f"parameter error {model:.2e} (whole model), {tensor:.2e} (worst tensor)")
    # The runs must have trained: loss fell from its start.
    assert results[0][0][-1] < results[0][0][0]
