"""Pipeline stages: the partition, the 1F1B order, its simulated timeline and the micro-batch plan."""

from __future__ import annotations

from itertools import product

import pytest

from axon.model.stages import stage_layers
from perfmodel.parameters import block_parameters
from perfmodel.stages import balanced_counts
from perfmodel.models import ModelShape
from perfmodel.pipeline import one_f_one_b, simulate, step_seconds
from perfmodel.training import split_micro_batches

SMALL = ModelShape(layers=6, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=1000, seq_len=16)


def _stage_loads(shape, counts):
    embedding = shape.vocab * shape.hidden
    loads = [n * block_parameters(shape) for n in counts]
    loads[0] += embedding
    loads[-1] += embedding + shape.hidden
    return loads


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 6])
def test_balanced_counts_minimize_the_largest_stage_like_brute_force(stages):
    counts = balanced_counts(SMALL, stages)
    assert len(counts) == stages and sum(counts) == SMALL.layers and min(counts) >= 1
    every = [c for c in product(range(1, SMALL.layers + 1), repeat=stages) if sum(c) == SMALL.layers]
    assert max(_stage_loads(SMALL, counts)) == min(max(_stage_loads(SMALL, c)) for c in every)


def test_a_heavy_embedding_leaves_the_end_stages_fewer_blocks():
    # the embedding weighs 1.7 blocks and the head a little more: stage loads 3.7, 3, 2.7 blocks
    assert balanced_counts(SMALL, 3) == [2, 3, 1]
    assert [list(r) for r in stage_layers(SMALL, 3, (2, 2, 2))] == [[0, 1], [2, 3], [4, 5]]


def test_one_f_one_b_order_by_hand_and_its_invariants():
    assert one_f_one_b(0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert one_f_one_b(1, 2, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    for stages, m in product((1, 2, 4, 8), (1, 2, 3, 8)):
        for stage in range(stages):
            order = one_f_one_b(stage, stages, m)
            assert sorted(order) == sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
            alive = peak = 0
            for kind, j in order:
                assert kind == "F" or ("F", j) in order[: order.index((kind, j))]
                alive += 1 if kind == "F" else -1
                peak = max(peak, alive)
            assert peak <= stages - stage  # activations in flight


@pytest.mark.parametrize("stages, m", [(1, 4), (2, 1), (2, 4), (4, 2), (4, 4), (4, 16)])
def test_even_stages_idle_the_textbook_bubble(stages, m):
    timeline = simulate([1.0] * stages, [2.0] * stages, m)
    assert timeline.step_s == pytest.approx((m + stages - 1) * 3.0)
    for idle in timeline.idle_fraction:  # (p - 1) slots of m + p - 1 idle; bubble / busy = (p - 1) / m
        assert idle == pytest.approx((stages - 1) / (m + stages - 1))


def test_uneven_stages_by_hand():
    # stage 0: F0 0-1, F1 1-2, B0 7-9, B1 13-15; stage 1: F0 1-3, B0 3-7, F1 7-9, B1 9-13
    timeline = simulate([1.0, 2.0], [2.0, 4.0], 2)
    assert timeline.step_s == pytest.approx(15.0)
    assert timeline.idle_fraction == pytest.approx((1 - 6 / 15, 1 - 12 / 15))
    # 0.5 s per hand-off: two lie on the critical path (F0 out, B1 back); F1's hides behind B0
    assert simulate([1.0, 2.0], [2.0, 4.0], 2, p2p_s=0.5).step_s == pytest.approx(16.0)


def test_automatic_micro_batches_with_stages():
    assert split_micro_batches(64, 0, 2, 1) == (32, 1)  # no pipeline: one micro-batch
    assert split_micro_batches(64, 0, 2, 4) == (2, 16)  # >= 4 per stage: the biggest such micro-batch
    assert split_micro_batches(8, 0, 1, 4) == (1, 8)  # cannot reach 16: one sequence each
    assert split_micro_batches(64, 3, 2, 4) is None and split_micro_batches(63, 0, 2, 1) is None


def test_long_schedules_are_estimated_within_3_percent_of_the_replay():
    # stages like the engine's: a heavier first (embedding) and last (head, loss), and middles of
    # c or c + 1 blocks; the estimate is what perfmodel uses past REPLAY_OPS operations
    for p, m, heavy_first, heavy_last in [(7, 7, 1.2, 1.9), (16, 64, 1.1, 1.5), (32, 128, 1.3, 2.0), (5, 40, 1.0, 1.0)]:
        forward = [1.0 * (1.25 if s % 2 else 1.0) for s in range(p)]
        forward[0], forward[-1] = heavy_first, heavy_last
        backward = [2 * f for f in forward]
        slots = [f + b for f, b in zip(forward, backward)]
        estimate = sum(slots) + (m - 1) * max(slots)
        assert estimate == pytest.approx(simulate(forward, backward, m).step_s, rel=0.03)
    assert step_seconds([1.0, 2.0], [2.0, 4.0], 2) == simulate([1.0, 2.0], [2.0, 4.0], 2).step_s
