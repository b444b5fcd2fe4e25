"""Overlap switches never change a number, and leave nothing in flight across steps."""

from __future__ import annotations

import itertools

import pytest

import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}
SWITCH_NAMES = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")
# Everything off, each switch alone, everything on.
SWITCHES = [dict.fromkeys(SWITCH_NAMES, False)] + [
    {name: name == only for name in SWITCH_NAMES} for only in SWITCH_NAMES] + [dict.fromkeys(SWITCH_NAMES, True)]
BUCKET_MB = 0.02  # ~20 KB: several data-parallel buckets even for this small model


def train(rank, layout, switches):
    config = build_config({
        "model": MODEL, "layout": {a: getattr(layout, a) for a in ("data", "depth", "row", "col")},
        "train": {"steps": 4, "global_batch": 8, "micro_batch": max(1, 4 // (layout.data * layout.depth)),
                  "lr": 1e-3, "seed": 3},
        "overlap": {**switches, "bucket_mb": BUCKET_MB}})
    grid = Grid(layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    losses, in_flight = [], []
    for step in range(config.train.steps):
        losses.append(trainer.step(step)["loss"])
        in_flight.append((len(trainer.pending), grid.trace.unwaited, len(trainer.prefetcher.in_flight) if trainer.prefetcher is not None else 0))
    params = full_parameters(trainer.model, grid)
    counts = {"issued": trainer.pending.issued, "waited": trainer.pending.waited,
              "prefetched": trainer.prefetcher.prefetched if trainer.prefetcher is not None else 0,
              "gathers_per_step": len(trainer.prefetcher.recorded) if trainer.prefetcher is not None else 0,
              "launched_in_backward": trainer.buckets.launched, "buckets": len(trainer.buckets.buckets)}
    grid.destroy()
    return losses, params, in_flight, counts


def run_switches(rank, world, layouts):
    return [[train(rank, layout, switches) for switches in SWITCHES] for layout in layouts]


def test_switches_give_identical_numbers_and_leak_nothing():
    layouts = [Layout(depth=2, col=2), Layout(depth=2, row=2), Layout(data=2, depth=2), Layout(depth=4),
               Layout(row=2, col=2), Layout(data=4)]
    for layout, runs in zip(layouts, run_distributed(4, run_switches, layouts)[0]):
        base_losses, base_params, _, _ = runs[0]  # everything synchronous
        for switches, (losses, params, in_flight, counts) in zip(SWITCHES, runs):
            label = f"{layout} {switches}"
            assert losses == base_losses, label  # bitwise
            assert all(torch.equal(params[n], base_params[n]) for n in base_params), label
            assert in_flight == [(0, 0, 0)] * len(losses), label  # nothing crosses a step boundary
            assert counts["issued"] == counts["waited"], label  # every handle waited exactly once
            micro_batches = 2 if layout.data * layout.depth <= 4 else 1
            if switches["reduce_scatter"] and layout.depth > 1:
                # 7 linear layers per block x 2 + LM head, once per micro-batch per step
                assert counts["issued"] == (7 * 2 + 1) * micro_batches * len(losses), label
            else:
                assert counts["issued"] == 0, label
            if switches["all_gather"] and layout.depth > 1:
                # Per micro-batch: the embedding + 15 linear layers forward, the 15 again in backward.
                assert counts["gathers_per_step"] == 31 * micro_batches, label
                # The first step records the order; every later gather is served by a prefetch.
                assert counts["prefetched"] == counts["gathers_per_step"] * (len(losses) - 1), label
            else:
                assert counts["prefetched"] == 0, label
            if layout.data > 1:
                assert counts["buckets"] > 2, label
                launched = counts["launched_in_backward"]
                # On, buckets go while backward runs (all but the last when they wait on reduce-scatters).
                expected = (0 < launched <= counts["buckets"] * len(losses)) if switches["data_parallel"] else launched == 0
                assert expected, f"{label}: {launched} of {counts['buckets']} x {len(losses)} launched in backward"
            else:
                assert counts["buckets"] == (1 if layout.depth > 1 else 0), label  # the norm gains over depth


def recompute_runs(rank, world, layouts):
    runs = []
    for layout in layouts:
        for recompute in ("none", "block"):
            config = build_config({
                "model": MODEL, "layout": {a: getattr(layout, a) for a in ("data", "depth", "row", "col")},
                "train": {"steps": 3, "global_batch": 8, "lr": 1e-3, "seed": 4, "recompute": recompute}})
            grid = Grid(layout, rank)
            trainer = Trainer(config, grid, torch.device("cpu"))
            calls = []
            trainer.model.layers["0"].attention.wq.register_forward_hook(lambda *_: calls.append(1))
            losses = [m["loss"] for m in trainer.fit()]
            prefetch = (trainer.prefetcher.prefetched, len(trainer.prefetcher.recorded)) if trainer.prefetcher is not None else None
            runs.append((losses, full_parameters(trainer.model, grid), len(calls), prefetch))
            grid.destroy()
    return runs


def test_block_recompute_changes_no_number():
    layouts = [Layout(depth=2, col=2), Layout(data=2, row=2)]
    runs = run_distributed(4, recompute_runs, layouts)[0]
    for i, layout in enumerate(layouts):
        (plain_losses, plain_params, plain_calls, plain_prefetch), (re_losses, re_params, re_calls, re_prefetch) = \
            runs[2 * i], runs[2 * i + 1]
        assert (plain_calls, re_calls) == (3, 6), layout  # one forward per step, plus one recompute
        if layout.depth > 1:
            # OAG follows the recomputation too: the embedding + 15 forward + 14 recomputed (the LM
            # head is outside the blocks) + 15 backward gathers per step, all prefetched after the
            # first of the 3 steps.
            assert plain_prefetch == (2 * 31, 31) and re_prefetch == (2 * 45, 45), layout
        assert re_losses == plain_losses, layout
        assert all(torch.equal(re_params[n], plain_params[n]) for n in plain_params), layout


def traced_step(rank, world, out_dir, all_reduce):
    layout = Layout(depth=2, col=2)
    config = build_config({
        "model": MODEL, "layout": {"depth": 2, "col": 2}, "out_dir": str(out_dir),
        "train": {"steps": 3, "global_batch": 8, "lr": 1e-3, "trace_steps": 1},
        "overlap": dict.fromkeys(SWITCH_NAMES, all_reduce)})
    grid = Grid(layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    history = trainer.fit()
    counts = {}
    for event in trainer.traced_events:
        counts[(event.op, event.axis)] = counts.get((event.op, event.axis), 0) + 1
    grid.destroy()
    return history, counts


def test_every_collective_of_a_step_is_traced(tmp_path):
    import json

    for overlap in (False, True):
        history, counts = run_distributed(4, traced_step, tmp_path / str(overlap), overlap)[0]
        # Hand count for 2 blocks at depth 2 x col 2 (row has size 1: no row collectives).
        # Depth all-gathers: 15 linear layers twice (forward, backward) + the embedding once.
        # Depth reduce-scatters: 15 linear dW + the embedding's.
        # col all-reduces: forward, one per normal layer's output (wq, wk, wv, w1, w3 per block;
        # the LM head) = 11, plus each RMSNorm's statistics forward and backward (5 norms) = 10;
        # backward, each transposed layer's dX (wo, w2 per block) = 4. Then the clip norm: 1.
        # data+depth (here just depth) all-reduces: the norm-gain gradient bucket 1, the loss 1;
        # depth all-reduce: the clip norm.
        assert counts == {("all_gather", "depth"): 31, ("reduce_scatter", "depth"): 16,
                          ("all_reduce", "col"): 26, ("all_reduce", "data+depth"): 2,
                          ("all_reduce", "depth"): 1}, counts
        for row in history:
            assert 0 < row["exposed_comm_s"] <= row["comm_s"] + 1e-9 and 0 <= row["overlap_fraction"] < 1
        if not overlap:
            assert all(row["overlap_fraction"] == pytest.approx(0, abs=1e-9) for row in history)
        trace = json.loads((tmp_path / str(overlap) / "comm_trace_rank0.json").read_text())
        spans = [e for e in trace["traceEvents"] if e["tid"] != "waiting"]
        assert len(spans) == sum(counts.values()) and all(e["ph"] == "X" and e["dur"] >= 0 for e in spans)


def prefetch_departures(rank, world):
    grid = Grid(Layout(depth=2), rank)
    config = build_config({"model": MODEL, "layout": {"depth": 2}, "train": {"steps": 1, "global_batch": 4}})
    trainer = Trainer(config, grid, torch.device("cpu"))
    model, prefetcher = trainer.model, trainer.prefetcher
    ids = torch.randint(0, MODEL["vocab"], (2, MODEL["seq_len"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)  # outside a step: synchronous gathers
    steps = []
    for backward in (True, True, False, True, True):
        before = prefetcher.prefetched
        prefetcher.begin_step()
        try:
            logits = model(ids)
            if backward:
                logits.pow(2).mean().backward()
        finally:
            prefetcher.end_step()
        trainer.pending.finish()
        steps.append((torch.equal(logits.detach(), reference), prefetcher.prefetched - before,
                      len(prefetcher.recorded), len(prefetcher.in_flight), grid.trace.unwaited))
    grid.destroy()
    return steps


def test_prefetch_follows_a_changed_step_and_drains():
    steps = run_distributed(2, prefetch_departures)[0]
    # Forward + backward gathers 1 + 15 + 15 = 31 times; forward alone 16 times.
    assert steps == [
        (True, 0, 31, 0, 0),  # the first step only records
        (True, 31, 31, 0, 0),  # the second is served entirely by prefetches
        (True, 16, 16, 0, 0),  # forward only: follows for 16, the 2 gathers issued beyond are drained
        (True, 16, 31, 0, 0),  # backward departs from the recording at gather 17: synchronous from there
        (True, 31, 31, 0, 0),  # and the step after follows again
    ]
