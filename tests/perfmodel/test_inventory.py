"""perfmodel's collective inventory matches what axon really issues, collective by collective.

The reference is axon's own communication trace of a training step on 4 gloo ranks: every
(op, axis, bytes) the model prices must be one the engine runs, as often, and no other.
"""

from __future__ import annotations

from collections import Counter

import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from perfmodel.workload import micro_batch_work, step_collectives
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 96, "heads": 8, "kv_heads": 4, "ffn": 80, "vocab": 136, "seq_len": 16}
BUCKET_MB = 0.01
# (layout, dtype, recompute, micro-batches per step[, gradient reduction dtype])
CASES = [
    (Layout(depth=2, col=2), "float32", "none", 2),
    (Layout(data=2, row=2), "float32", "none", 1),
    (Layout(row=2, col=2), "float32", "block", 2),
    (Layout(depth=4), "bfloat16", "none", 1),
    (Layout(data=2, depth=2), "float32", "block", 2),
    (Layout(data=2, depth=1, row=1, col=2), "bfloat16", "block", 1),
    # rank 0 is the first of two stages: embedding, one block, sends forward, receives back
    (Layout(pipe=2, depth=2), "float32", "none", 4),
    (Layout(pipe=2, row=2), "bfloat16", "block", 2),
    # bf16 gradient reductions: the depth reduce-scatters and data buckets send half the bytes
    (Layout(data=2, depth=2), "bfloat16", "none", 2, "bfloat16"),
]
GLOBAL_BATCH = 8


def traced_step(rank, world, cases):
    results = []
    for layout, dtype, recompute, micro_batches, *reduce in cases:
        micro = GLOBAL_BATCH // (layout.data * layout.depth) // micro_batches
        config = build_config({
            "model": MODEL, "layout": layout.sizes(),
            "train": {"steps": 2, "global_batch": GLOBAL_BATCH, "micro_batch": micro, "dtype": dtype,
                      "recompute": recompute, "trace_steps": 1, "grad_reduce_dtype": (reduce or ["float32"])[0]},
            "overlap": {"bucket_mb": BUCKET_MB}})
        grid = Grid(layout, rank)
        trainer = Trainer(config, grid, torch.device("cpu"))
        trainer.step(0)
        trainer.step(1)  # the traced step: prefetching replays the first one's order
        # The model prices each hand-off between stages once, at its sender.
        results.append(Counter((e.op, e.axis, e.bytes) for e in trainer.traced_events if e.op != "recv"))
        grid.destroy()
    return results


def predicted(layout: Layout, dtype: str, recompute: str, micro_batches: int, reduce: str = "float32") -> Counter:
    """Rank 0's collectives: the whole model, or with pipe the first stage's."""
    shape = ModelShape(**MODEL)
    micro = GLOBAL_BATCH // (layout.data * layout.depth) // micro_batches
    stage_layers, last = shape.layers // layout.pipe, layout.pipe == 1
    work = micro_batch_work(shape, layout, micro, shape.seq_len, dtype, recompute == "block",
                            stage_layers, first=True, last=last, grad_reduce_dtype=reduce)
    counts = Counter()
    for comm in work.comms:
        if all(getattr(layout, axis) == 1 for axis in comm.axes):
            continue  # axon skips collectives over an axis of size 1
        counts[(comm.op, "+".join(comm.axes), int(comm.nbytes))] += comm.count * micro_batches
    for comm in step_collectives(shape, layout, BUCKET_MB, stage_layers, True, last, reduce):
        counts[(comm.op, "+".join(comm.axes), int(comm.nbytes))] += comm.count
    return counts


def test_model_prices_exactly_the_collectives_axon_runs():
    traced = run_distributed(4, traced_step, CASES)[0]
    for case, actual in zip(CASES, traced):
        expected = predicted(*case)
        label = f"{case[0]} {case[1]} recompute={case[2]} reduce={case[4] if len(case) > 4 else 'float32'}"
        assert sum(actual.values()) > 20, label
        assert actual == expected, f"{label}: only traced {actual - expected}; only predicted {expected - actual}"
