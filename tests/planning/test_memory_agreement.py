"""The dry run's memory against perfmodel's, per stage and per component, on deep pipelines.

The dry run steps each stage's own schedule far enough to reach its peak (warm-up and two
steady-state pairs); perfmodel must predict that peak within 5% in total and in each of
gathered weights, activations and gradient blocks (the state exactly). test_dry_run.py holds
its layouts to the same rule (`assert_memory_agrees`) on the ranks it already rehearses.
"""

from __future__ import annotations

import pytest

from axon.planning.dry_run.cli import rehearse
from axon.planning.dry_run.rank import rehearsed_micro_batches
from axon.spec.layout import Layout
from axon.spec.schedules import in_flight_peak
from axon.testing.memory_check import assert_memory_agrees
from axon.testing.runs import DRY_RUN_MODEL as MODEL, dry_run_config as config_for

def test_rehearsal_covers_warm_up_and_two_steady_pairs():
    """p - s + 1 micro-batches in plain 1F1B (at least 2, at most the step's), a multiple of p
    interleaved; the peak in flight is the whole step's either way."""
    assert [rehearsed_micro_batches(s, 16, 32) for s in (0, 1, 14, 15)] == [17, 16, 3, 2]
    assert [rehearsed_micro_batches(s, 16, 2) for s in (0, 15)] == [2, 2]
    assert rehearsed_micro_batches(0, 1, 8) == 2 and rehearsed_micro_batches(0, 1, 1) == 1
    assert [rehearsed_micro_batches(s, 4, 16, 2) for s in range(4)] == [8, 8, 4, 4]
    for s in range(4):
        assert in_flight_peak(s, 4, rehearsed_micro_batches(s, 4, 16, 2), 2) == in_flight_peak(s, 4, 16, 2)


# 16 stages of one block each with few micro-batches (2 or 4 for 16 stages): the first, a
# middle and the last stage, with and without recompute and depth (gathered weights, gradient
# blocks in flight across one backward into the next).
DEEP = {**MODEL, "layers": 16}
DEEP_CASES = [
    (Layout(pipe=16), "bfloat16", "block", 2),
    (Layout(pipe=16), "float32", "none", 4),
    (Layout(pipe=16, depth=2), "bfloat16", "block", 2),
]


@pytest.mark.parametrize("case", DEEP_CASES, ids=lambda c: f"{c[0].sizes()}-{c[1]}-{c[2]}-m{c[3]}")
def test_deep_pipeline_memory_agrees_per_stage_and_component(case):
    layout, dtype, recompute, micro_batches = case
    config = config_for(layout, dtype, recompute, micro_batches, model=DEEP)
    for stage in (0, 1, layout.pipe - 1):
        result = rehearse(config, layout.rank_of({**{axis: 0 for axis in layout.sizes()}, "pipe": stage}))
        assert result["stage"] == stage and result["micro_batches"] == micro_batches
        assert result["rehearsed_micro_batches"] == min(micro_batches, layout.pipe - stage + 1)
        assert result["collectives_agree"]
        assert_memory_agrees(result)
