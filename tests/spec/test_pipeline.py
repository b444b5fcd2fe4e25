"""Pipeline stages: the partition, the 1F1B order, its simulated timeline and the micro-batch plan."""

from __future__ import annotations

from itertools import product

import pytest

from axon.model.stages import stage_layers
from axon.spec.parameters import block_parameters
from axon.spec.stage_split import balanced_counts
from axon.spec.shapes import ModelShape
from axon.spec.schedules import in_flight_peak, one_f_one_b, pipeline_order
from perfmodel.pipeline_replay import (simulate, simulate_interleaved,
                                step_seconds)
from axon.spec.training import split_micro_batches

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


def F(j, c):
    return ("F", j, c)


def B(j, c):
    return ("B", j, c)


def test_interleaved_orders_by_hand():
    # p = 2, v = 2, m = 4. Forwards go in groups of p micro-batches per chunk: (0,c0) (1,c0) (0,c1)
    # (1,c1) (2,c0) ...; backwards likewise with the chunks reversed. Stage 0 warms up with
    # 2 (p - 1) + (v - 1) p = 4 forwards, stage 1 with 2.
    assert pipeline_order(0, 2, 4, 2) == [F(0, 0), F(1, 0), F(0, 1), F(1, 1), F(2, 0), B(0, 1), F(3, 0), B(1, 1),
                                          F(2, 1), B(0, 0), F(3, 1), B(1, 0), B(2, 1), B(3, 1), B(2, 0), B(3, 0)]
    assert pipeline_order(1, 2, 4, 2) == [F(0, 0), F(1, 0), F(0, 1), B(0, 1), F(1, 1), B(1, 1), F(2, 0), B(0, 0),
                                          F(3, 0), B(1, 0), F(2, 1), B(2, 1), F(3, 1), B(3, 1), B(2, 0), B(3, 0)]
    # p = 4, v = 2, m = 4: stage 0's warm-up (10) exceeds its 8 forwards: all forwards, then all backwards
    assert pipeline_order(0, 4, 4, 2) == [F(j, c) for c in (0, 1) for j in range(4)] + \
        [B(j, c) for c in (1, 0) for j in range(4)]
    assert pipeline_order(3, 4, 4, 2) == [F(0, 0), F(1, 0), F(2, 0), F(3, 0), F(0, 1), B(0, 1), F(1, 1), B(1, 1),
                                          F(2, 1), B(2, 1), F(3, 1), B(3, 1), B(0, 0), B(1, 0), B(2, 0), B(3, 0)]
    # v = 1 is plain 1F1B
    assert pipeline_order(0, 2, 3) == [(kind, j, 0) for kind, j in one_f_one_b(0, 2, 3)]
    with pytest.raises(ValueError, match="multiple of the stages"):
        pipeline_order(0, 4, 6, 2)


def test_interleaved_orders_run_every_op_once_after_its_inputs():
    for p, v, k in product((2, 3, 4, 8), (2, 3, 4), (1, 2, 3)):
        m, everything = k * p, p * v
        orders = {s: pipeline_order(s, p, m, v) for s in range(p)}
        for s, order in orders.items():
            assert sorted(order) == sorted([F(j, c) for j in range(m) for c in range(v)]
                                           + [B(j, c) for j in range(m) for c in range(v)])
        # replay compute only: an op runs once the virtual stage before (forward) or after (backward) has
        done, position, progressed = set(), dict.fromkeys(orders, 0), True
        while progressed:
            progressed = False
            for s, order in orders.items():
                while position[s] < len(order):
                    kind, j, c = order[position[s]]
                    q = c * p + s
                    needs = ("F", q - 1, j) if kind == "F" else (("F", q, j) if q == everything - 1 else ("B", q + 1, j))
                    if (kind == "F" and q == 0) or needs in done:
                        done.add((kind, q, j))
                        position[s] += 1
                        progressed = True
                    else:
                        break
        assert len(done) == 2 * m * everything, (p, v, m)


def test_activations_in_flight():
    assert [in_flight_peak(s, 4, 8) for s in range(4)] == [4, 3, 2, 1]  # plain: p - s micro-batches
    # p = 2, v = 2, m = 4: stage 0 runs its 4 warm-up chunk forwards and one more (each half a
    # stage) before a backward: 2.5 micro-batches' activations where plain 1F1B keeps 2
    assert in_flight_peak(0, 2, 4, 2) == 2.5 and in_flight_peak(1, 2, 4, 2) == 1.5
    # p = 4, v = 2, m = 8: 2 (p - 1) + (v - 1) p + 1 = 11 chunk forwards in flight on stage 0
    assert in_flight_peak(0, 4, 8, 2) == 5.5
    # uneven chunks: the steady state trades chunk-1 backwards (0.25) for chunk-0 forwards (0.75)
    # until all 8 chunk-0 forwards and 3 of chunk 1 are alive
    assert in_flight_peak(0, 4, 8, 2, weights=(0.75, 0.25)) == 8 * 0.75 + 3 * 0.25


@pytest.mark.parametrize("p, v", [(2, 2), (2, 4), (4, 2), (4, 3), (4, 4)])
def test_interleaved_even_stages_idle_the_shrunk_bubble(p, v):
    for m in (p, 2 * p, 4 * p):
        # each chunk 1/v of a stage: forward 1/v, backward 2/v
        timeline = simulate_interleaved([1.0 / v] * (p * v), [2.0 / v] * (p * v), p, m)
        assert timeline.step_s == pytest.approx(3.0 * (m + (p - 1) / v))  # bubble (p - 1) / (v m) of busy
        assert timeline.idle_fraction == pytest.approx([(p - 1) / (v * m + p - 1)] * p)
        assert step_seconds([1.0 / v] * (p * v), [2.0 / v] * (p * v), m, p) == pytest.approx(timeline.step_s)
    # point-to-point time lengthens the step: at least the three hand-offs of the ramp
    assert simulate_interleaved([0.5] * 4, [1.0] * 4, 2, 2, p2p_s=0.1).step_s > simulate_interleaved(
        [0.5] * 4, [1.0] * 4, 2, 2).step_s + 0.3


def test_long_interleaved_schedules_are_estimated_near_the_replay():
    for p, v, m in [(8, 2, 64), (16, 2, 32), (8, 4, 32)]:
        forward = [1.0 * (1.25 if q % 3 else 1.0) for q in range(p * v)]
        forward[0], forward[-1] = 1.3, 1.8
        backward = [2 * f for f in forward]
        slots = [f + b for f, b in zip(forward, backward)]
        estimate = m * max(sum(slots[s::p]) for s in range(p)) + (p - 1) * max(slots)
        assert estimate == pytest.approx(simulate_interleaved(forward, backward, p, m).step_s, rel=0.05)


def test_perfmodel_prices_interleaving_and_plan_searches_it():
    from axon.spec.layout import Layout
    from perfmodel.machine import load_machine
    from axon.spec.shapes import PRESETS
    from perfmodel.predict import predict
    from perfmodel.search import search
    from axon.spec.training import TrainingSetup

    shape, machine = PRESETS["70B"], load_machine("perlmutter")
    setup = TrainingSetup(global_batch=512, seq_len=4096, micro_batch=1)
    plain, twice = (predict(shape, Layout(data=16, pipe=4, row=4, col=4, virtual_stages=v), machine, setup)
                    for v in (1, 2))
    # v times the point-to-point traffic, a smaller bubble, and 1 + (p - 1) / (p v) the activations
    # (within 1%: each chunk also keeps its boundary tensors, and one backward's working set
    # does not scale with the micro-batches in flight)
    assert twice.breakdown["pipeline_p2p"] == pytest.approx(2 * plain.breakdown["pipeline_p2p"], rel=0.01)
    assert twice.breakdown["pipeline_bubble"] < 0.7 * plain.breakdown["pipeline_bubble"]
    assert twice.memory["activations"] == pytest.approx(plain.memory["activations"] * (1 + 3 / 8), rel=0.01)
    # Pipelines forced (data and pipe only, 80 GB devices where the interleaved activations fit): the
    # search tries each pipelined layout interleaved too, and the smaller bubble wins.
    result = search(PRESETS["8B"], 64, load_machine("dgx-h100"),
                    TrainingSetup(global_batch=256, seq_len=4096, micro_batch=1), axes=("data", "pipe"), top=3)
    best, *others = result.predictions
    assert best.fits and best.layout.virtual_stages > 1  # an interleaved layout wins here
    plain_best = next(p for p in others if p.layout.virtual_stages == 1)
    assert plain_best.layout.sizes() == best.layout.sizes() and plain_best.step_time_s > best.step_time_s


def test_automatic_micro_batch_is_the_biggest_giving_four_per_stage():
    # Against the rule written out by brute force: the biggest divisor m of the shard's batch with
    # batch / m >= 4 x pipe, else 1.
    for per_shard in range(1, 130):
        for pipe in (2, 3, 4, 8):
            wanted = max([m for m in range(1, per_shard + 1) if per_shard % m == 0 and per_shard // m >= 4 * pipe],
                         default=1)
            assert split_micro_batches(per_shard * 3, 0, 3, pipe) == (wanted, per_shard // wanted), (per_shard, pipe)
