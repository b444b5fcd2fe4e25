"""The fast plan ranks layouts like the exhaustive search, and its shortcuts are sound.

The reference prices every layout that fits at every order of its axes larger than 1. The
fast plan's top 10 must be the same layouts, place by place, or within 0.5% predicted time.
GPU counts are picked so that the reference stays affordable; the big ones search a subset
of the axes.
"""

from __future__ import annotations

import dataclasses

import pytest

from perfmodel.collectives import PRICED_GROUPS
from axon.spec.layout import AXES, Layout, factorizations
from perfmodel.machine import CollectiveFit, load_machine
from axon.spec.shapes import ModelShape, preset
from perfmodel.pipeline_replay import simulate, step_seconds
from perfmodel.predict import predict
from perfmodel.search import fits_in_memory, layout_problem, search
from axon.spec.training import TrainingSetup
from perfmodel.workload import micro_batch_work, step_collectives

NO_PIPE = ("data", "depth", "row", "col")
NO_DATA = ("pipe", "depth", "row", "col")
MID = ModelShape(layers=24, hidden=3072, heads=24, kv_heads=8, ffn=8192, vocab=50304, seq_len=2048)
# (model, GPUs, machine, global batch, sequence, axes, other setup)
CASES = [
    ("8B", 32, "perlmutter", 128, 4096, AXES, {}),
    ("8B", 64, "perlmutter", 256, 4096, AXES, {"micro_batch": 1}),
    ("8B", 64, "perlmutter", 256, 4096, NO_PIPE, {"micro_batch": 1}),
    ("8B", 48, "alps", 96, 4096, NO_PIPE, {}),
    ("8B", 24, "frontier", 96, 2048, AXES, {"recompute": "block"}),
    ("70B", 256, "frontier", 512, 4096, AXES, {}),
    ("70B", 128, "dgx-h100", 256, 4096, AXES, {}),
    ("70B", 64, "alps", 128, 4096, AXES, {}),
    ("70B", 96, "frontier", 192, 4096, NO_PIPE, {"recompute": "block"}),
    ("70B", 512, "perlmutter", 512, 4096, NO_DATA, {"micro_batch": 1}),
    ("405B", 1024, "alps", 512, 4096, NO_DATA, {}),
    ("405B", 512, "frontier", 256, 4096, NO_DATA, {"recompute": "block"}),
    ("405B", 1024, "frontier", 1024, 8192, NO_DATA, {"recompute": "block"}),
    ("1B", 16, "frontier", 64, 4096, AXES, {}),
    ("1B", 64, "perlmutter", 128, 2048, NO_PIPE, {}),
    ("1B", 12, "dgx-h100", 48, 4096, AXES, {"dtype": "float32"}),
    ("350M", 8, "perlmutter", 32, 2048, AXES, {"overlap": ()}),
    ("mid", 48, "alps", 192, 2048, AXES, {}),
    ("mid", 72, "dgx-h100", 144, 2048, NO_PIPE, {}),
    ("mid", 40, "perlmutter", 80, 2048, AXES, {"micro_batch": 1}),
]


def _shape(name: str) -> ModelShape:
    return MID if name == "mid" else preset(name)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{len(c[5])}axes" for c in CASES])
def test_fast_plan_top_10_is_the_exhaustive_top_10(case):
    model, gpus, machine_name, batch, seq, axes, extra = case
    _check_fast_top_10(_shape(model), gpus, load_machine(machine_name),
                       TrainingSetup(global_batch=batch, seq_len=seq, **extra), axes)


def test_fast_plan_top_10_is_the_exhaustive_top_10_with_measured_fits():
    # Measured fits are not bounded by the links: each order's own placements bound it then.
    fits = {op: {"intra": {4: CollectiveFit(8.0, 60.0)}, "inter": {2: CollectiveFit(30.0, 9.0)}}
            for op in ("all_reduce", "all_gather", "reduce_scatter")}
    machine = dataclasses.replace(load_machine("perlmutter"), collectives=fits, concurrent_collectives=2,
                                  blocking_latency_us={"intra": {2: 15.0}, "inter": {2: 40.0}})
    _check_fast_top_10(MID, 24, machine, TrainingSetup(global_batch=48, seq_len=2048), AXES)


def test_fast_plan_fills_the_table_with_the_fastest_layouts_that_do_not_fit():
    # Too few fit: the rest of the table is the fastest plain layouts that do not, in the
    # default order, taken best-first by that order's closed-form bound.
    shape, machine = preset("8B"), load_machine("alps")
    setup = TrainingSetup(global_batch=32, seq_len=shape.seq_len, dtype="bfloat16")
    fast = search(shape, 8, machine, setup, top=10)
    every = search(shape, 8, machine, setup, exhaustive=True).predictions
    reference = [p for p in every if p.fits or p.layout.virtual_stages == 1][:10]
    assert 0 < fast.fitting < 10 and len(fast.predictions) == 10
    assert [(p.fits, p.step_time_s) for p in fast.predictions] == [(p.fits, p.step_time_s) for p in reference]
    assert fast.priced < len(every)


def _check_fast_top_10(shape: ModelShape, gpus: int, machine, setup: TrainingSetup, axes: tuple[str, ...]):
    fast = search(shape, gpus, machine, setup, axes, top=10)
    reference = search(shape, gpus, machine, setup, axes, top=10, exhaustive=True)
    assert len(fast.predictions) == len(reference.predictions) == min(10, reference.dividing)
    assert fast.dividing == reference.dividing and fast.fitting == reference.fitting
    for mine, best in zip(fast.predictions, reference.predictions):
        # The same time place by place: the fast plan's shortcuts only skip what cannot win.
        assert mine.fits == best.fits
        assert mine.step_time_s == pytest.approx(best.step_time_s, rel=1e-9), (mine.layout, best.layout)
    if reference.fitting >= 10:  # with fewer, both price every layout that does not fit
        assert fast.priced < reference.priced


def test_complete_plan_gives_every_layout_its_exhaustive_best_order():
    # Skipping orders that place every group alike loses nothing, layout by layout.
    shape, machine = preset("8B"), load_machine("frontier")
    setup = TrainingSetup(global_batch=64, seq_len=2048, micro_batch=1)
    complete = search(shape, 16, machine, setup)
    reference = search(shape, 16, machine, setup, exhaustive=True)
    assert complete.dividing == len(complete.predictions) == len(reference.predictions) > 50
    best = {(*p.layout.sizes().values(), p.layout.virtual_stages): p.step_time_s for p in reference.predictions}
    for p in complete.predictions:
        assert p.step_time_s == pytest.approx(best[(*p.layout.sizes().values(), p.layout.virtual_stages)], rel=1e-12)
    assert complete.priced < reference.priced


def test_memory_check_agrees_with_predict():
    # The search sets aside layouts by their memory before pricing them; predict's verdict rules.
    for model, gpus, machine_name, batch, extra in (("70B", 256, "frontier", 512, {}),
                                                     ("8B", 64, "perlmutter", 256, {"recompute": "block"})):
        shape, machine = preset(model), load_machine(machine_name)
        setup = TrainingSetup(global_batch=batch, seq_len=4096, **extra)
        layouts = [lay for lay in factorizations(gpus) if layout_problem(shape, lay, setup) is None]
        verdicts = [fits_in_memory(shape, lay, machine, setup) for lay in layouts]
        assert verdicts == [predict(shape, lay, machine, setup).fits for lay in layouts]
        assert any(verdicts) and not all(verdicts)


def test_priced_groups_cover_every_collective_of_a_step():
    # Orders are told apart by the placements of these groups only.
    shape = preset("1B")
    layout = Layout(data=2, pipe=2, depth=2, row=2, col=2)
    for first, last in ((True, False), (False, True)):
        axes = {c.axes for c in micro_batch_work(shape, layout, 1, 2048, "bfloat16", True, 8, first, last).comms}
        axes |= {c.axes for c in step_collectives(shape, layout, 25.0, 8, first, last)}
        assert axes <= set(PRICED_GROUPS)


def test_memoized_replay_returns_the_replay():
    forward, backward = [1.0, 1.5, 1.5, 2.0], [2.0, 3.0, 3.0, 4.5]
    for m in (1, 3, 8):
        first = step_seconds(forward, backward, m)
        assert first == simulate(forward, backward, m).step_s == step_seconds(list(forward), list(backward), m)
