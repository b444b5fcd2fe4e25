"""The closed-form step bound (perfmodel.bound) is never above a prediction, and not far below.

The planner sets layouts aside by this bound without predicting them, so one layout whose
bound exceeds its best order's time could drop from the plan unseen. Every layout of a few
small searches, plain and interleaved, on every profile: the bound against the exhaustive
best order (the default order where the layout does not fit: any order bounds it). The
search also bounds each rank order by its own placements before pricing it: that bound
against the order's prediction, measured collective fits included.
"""

from __future__ import annotations

import dataclasses

import pytest

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel.bound import StepBound
from perfmodel.collectives import group_placement
from perfmodel.machine import CollectiveFit, load_machine
from perfmodel.predict import predict
from perfmodel.search import candidate_orders, search

MID = ModelShape(layers=12, hidden=2048, heads=16, kv_heads=4, ffn=5632, vocab=32000, seq_len=2048)
# (model, GPUs, machine, global batch, sequence, other setup): pipelines with few and many
# micro-batches, recompute on and off, float32, no overlap.
CASES = [
    ("1B", 16, "frontier", 64, 2048, {"micro_batch": 1}),
    ("1B", 8, "dgx-h100", 32, 4096, {"recompute": "block"}),
    ("mid", 24, "perlmutter", 48, 2048, {}),
    ("mid", 16, "alps", 16, 2048, {"dtype": "float32", "overlap": ()}),
    ("8B", 16, "perlmutter", 64, 4096, {"micro_batch": 1, "recompute": "block"}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_bound_is_below_every_layouts_best_order(case):
    model, gpus, machine_name, batch, seq, extra = case
    shape, machine = MID if model == "mid" else preset(model), load_machine(machine_name)
    setup = TrainingSetup(global_batch=batch, seq_len=seq, **extra)
    bound = StepBound(shape, machine, setup)
    every = search(shape, gpus, machine, setup, exhaustive=True).predictions
    assert len(every) > 30 and any(p.layout.virtual_stages > 1 for p in every)
    ratios = [bound(p.layout) / p.step_time_s for p in every]
    assert max(ratios) <= 1, every[ratios.index(max(ratios))].layout
    assert sorted(ratios)[len(ratios) // 2] > 0.5  # it sets layouts aside only if it is near


def test_bound_gives_up_the_pipeline_where_stages_lend_cores():
    # Oversubscribed ranks lend their cores between stages: predict's compute shrinks there.
    shape, setup = preset("1B"), TrainingSetup(global_batch=32, seq_len=2048, micro_batch=1)
    machine = dataclasses.replace(load_machine("frontier"), oversubscription=4.0)
    bound = StepBound(shape, machine, setup)
    pipelined, flat = Layout(pipe=4, row=2), Layout(data=4, row=2)
    assert bound(pipelined) <= predict(shape, pipelined, machine, setup).step_time_s
    assert bound(pipelined) < 0.1 * bound(flat) <= predict(shape, flat, machine, setup).step_time_s


def _fitted(machine_name: str):
    """The profile with measured collective fits, a blocking latency and two collectives in
    flight at once: prices the links alone do not bound."""
    fits = {op: {"intra": {4: CollectiveFit(8.0, 60.0)}, "inter": {2: CollectiveFit(30.0, 9.0)}}
            for op in ("all_reduce", "all_gather", "reduce_scatter")}
    return dataclasses.replace(load_machine(machine_name), collectives=fits, concurrent_collectives=2,
                               blocking_latency_us={"intra": {2: 15.0}, "inter": {2: 40.0}})


@pytest.mark.parametrize("fitted", [False, True], ids=["links", "measured-fits"])
def test_an_orders_bound_is_below_that_orders_prediction(fitted):
    # The search prices an order only if this bound, with the order's own placements, can win.
    machine = _fitted("perlmutter") if fitted else load_machine("perlmutter")
    setup = TrainingSetup(global_batch=32, seq_len=2048)
    bound = StepBound(MID, machine, setup)
    for layout in (Layout(pipe=2, depth=2, row=2, col=2), Layout(data=2, pipe=2, depth=2, row=2, virtual_stages=2),
                   Layout(data=2, depth=4, col=2)):
        for order in candidate_orders(layout):
            ordered = dataclasses.replace(layout, order=order)
            placements = {axis: group_placement(ordered, (axis,), machine) for axis in ("pipe", "depth", "row", "col")}
            time = predict(MID, ordered, machine, setup).step_time_s
            assert 0.5 * time < bound(ordered, placements) <= time, ordered


def test_predicts_compute_cache_tells_devices_apart():
    # predict keeps a chunk's compute for every machine whose compute figures agree (a plan's
    # rank orders); a machine with other figures must not get it.
    machine, setup, layout = load_machine("alps"), TrainingSetup(global_batch=16, seq_len=2048), Layout(depth=2, row=4)
    base = predict(MID, layout, machine, setup).breakdown
    slower = predict(MID, layout, dataclasses.replace(machine, in_context_slowdown=2 * machine.in_context_slowdown),
                     setup).breakdown
    flops_only = dataclasses.replace(machine, gemm_efficiency_by_min_dim={})
    curve = tuple((flops, efficiency / 2) for flops, efficiency in machine.gemm_efficiency)
    plain = predict(MID, layout, flops_only, setup).breakdown
    halved = predict(MID, layout, dataclasses.replace(flops_only, gemm_efficiency=curve), setup).breakdown
    assert slower["gemm"] == pytest.approx(2 * base["gemm"]) and slower["elementwise"] > base["elementwise"]
    assert plain["gemm"] != base["gemm"] and halved["gemm"] == pytest.approx(2 * plain["gemm"])
