"""train.compile: the local math compiled by inductor (CPU backend here) without graph breaks
or recompiles, training every kind of layout exactly like the eager 1-process run."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.utils

from axon.config import build_config
from axon.kernels import local_math
from axon.parallel.full_tensor import full_parameters
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer, compile_enabled
from axon.spec.layout import AXES, Layout
from axon.testing.runs import relative_errors
from axon.testing.spawn import run_distributed


pytestmark = pytest.mark.timeout(600)

# The equivalence suite's model: hidden 96 = 16 heads x 6 with 8 kv heads (GQA).
MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}


def config_for(layout: Layout, compiled: bool, micro_batch: int, dtype: str = "float32"):
    return build_config({
        "model": MODEL, "layout": {axis: getattr(layout, axis) for axis in AXES},
        "train": {"steps": 5, "global_batch": 8, "micro_batch": micro_batch, "lr": 1e-3, "seed": 7,
                  "grad_clip": 0.5, "compile": compiled, "dtype": dtype},
    })


def train_and_gather(config, rank: int):
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    warmed = graphs_compiled()
    losses = [m["loss"] for m in trainer.fit()]
    params = full_parameters(trainer.model, grid)
    grid.destroy()
    return losses, params, graphs_compiled() - warmed


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_auto_compiles_on_gpus_only():
    auto = config_for(Layout(), "auto", 4).train
    assert compile_enabled(auto, torch.device("cuda")) and not compile_enabled(auto, torch.device("cpu"))
    assert compile_enabled(config_for(Layout(), True, 4).train, torch.device("cpu"))


def test_every_local_function_is_one_graph():
    x = torch.randn(2, 4, 16, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(16))
    q, k = torch.randn(2, 4, 4, 8, requires_grad=True), torch.randn(2, 2, 4, 8, requires_grad=True)
    cos, sin = torch.randn(4, 8), torch.randn(4, 8)
    args = {"square_sum": (x,), "rms_scale": (x, torch.ones(2, 4, 1), w, 16, 1e-5), "rms_norm": (x, w, 16, 1e-5),
            "add_square_sum": (x, x), "add_rms_norm": (x, x, w, 16, 1e-5),
            "rotate_query_key": (q, k, cos, sin), "swiglu": (x, x)}
    assert set(args) == {fn.__name__ for fn in local_math.FUNCTIONS}
    for fn in local_math.FUNCTIONS:
        explained = torch._dynamo.explain(fn)(*args[fn.__name__])
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (fn.__name__, explained.break_reasons)


def test_world_one_compiles_whole_blocks_matching_eager_and_never_recompiling():
    from axon.parallel.prefetch import gather_now

    eager, eager_params, _ = train_and_gather(config_for(Layout(), False, 4), 0)
    grid = Grid(Layout(), 0)
    trainer = Trainer(config_for(Layout(), True, 4), grid, torch.device("cpu"))
    assert trainer.compiled_whole  # row, col and depth 1: no collective inside a block
    warmed = graphs_compiled()
    compiled = [m["loss"] for m in trainer.fit()]
    assert graphs_compiled() == warmed, "a training step compiled again after the warm-up"
    params = full_parameters(trainer.model, grid)
    # After training (explain compiles on its own): the block is one graph, without a break.
    block = trainer.model.layers["0"]
    x = torch.randn(4, MODEL["seq_len"], MODEL["hidden"], requires_grad=True)
    cos, sin = trainer.model.rope_tables(MODEL["seq_len"], x.device)
    explained = torch._dynamo.explain(block._with_weights)(x, cos, sin, *(gather_now(l, x.dtype) for l in block.linears))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    grid.destroy()
    loss_error, model_error, _ = relative_errors(compiled, params, eager, eager_params)
    assert loss_error < 1e-5 and model_error < 1e-5, (loss_error, model_error)
    assert compiled[-1] < compiled[0]


# Every axis split at least once, with local math compiled around the collectives: col (the
# norm's all-reduce between two compiled halves) with a 2-stage pipeline, depth with row (two
# micro-batches per shard); and data with pipe, whose blocks hold no collective: compiled whole.
WORLD_4_LAYOUTS = [(Layout(pipe=2, col=2), 1), (Layout(depth=2, row=2), 2), (Layout(data=2, pipe=2), 1)]


def compiled_runs(rank, world, cases):
    out = []
    for layout, micro in cases:
        losses, params, recompiled = train_and_gather(config_for(layout, True, micro), rank)
        out.append((losses, params if rank == 0 else None, recompiled))
    return out


def test_compiled_layouts_match_the_eager_one_process_run():
    reference = train_and_gather(config_for(Layout(), False, 0), 0)[:2]
    results = run_distributed(4, compiled_runs, WORLD_4_LAYOUTS)[0]
    for (layout, _), (losses, params, recompiled) in zip(WORLD_4_LAYOUTS, results):
        loss_error, model_error, tensor_error = relative_errors(losses, params, *reference)
        assert loss_error < 1e-5 and model_error < 1e-5 and tensor_error < 1e-4, (layout, loss_error, model_error)
        assert recompiled == 0, f"{layout}: {recompiled} graph(s) compiled during training, after the warm-up"
