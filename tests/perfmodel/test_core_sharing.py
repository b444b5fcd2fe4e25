"""perfmodel.core_sharing: pipeline stages lending cores while they sleep, against hand-solved cases."""

from __future__ import annotations

import math

import pytest

from perfmodel.core_sharing import lent_compute_factor, shared_core_replay, stage_mates_on_node, stage_mix_by_node
from axon.spec.layout import Layout
from perfmodel.machine import machine_from_dict
from axon.spec.shapes import ModelShape
from perfmodel.predict import predict
from axon.spec.training import TrainingSetup

MACHINE = dict(name="shared-cpu", devices_per_node=8, memory_gb=4, peak_tflops={"float32": 0.02},
               memory_bandwidth_gbs=10, intra_node={"bandwidth_gbs": 1, "latency_us": 100},
               inter_node={"bandwidth_gbs": 1, "latency_us": 100}, nics_per_node=1,
               gemm_efficiency=[[1e6, 0.5], [1e9, 0.9]], overlap_efficiency=0.0, op_overhead_us=0,
               # Collectives cost ~nothing but their blocking latency: all of it is sleep.
               collectives={op: {"intra": {2: {"alpha_us": 0, "bandwidth_gbs": 1e6}}}
                            for op in ("all_reduce", "all_gather", "reduce_scatter")},
               blocking_latency_us={"intra": {2: 2000}})


def test_stage_mates_on_node_by_hand():
    assert stage_mates_on_node(Layout(pipe=2, col=4), 8) == (4, 4)
    assert stage_mates_on_node(Layout(pipe=2, col=4), 4) == (4, 0)  # a stage per node: nothing to lend
    # data, pipe, depth, row, col outermost first: ranks 0, 1 (data 0) and 4, 5 (data 1) are stage 0.
    assert stage_mates_on_node(Layout(data=2, pipe=2, row=2), 8) == (4, 4)
    assert stage_mates_on_node(Layout(pipe=4, row=2), 8) == (2, 6)


def test_stage_mix_by_node_by_hand():
    # pipe=4 x row=2 (strides: pipe 2, row 1) on nodes of 4: stages 0, 1 share one node, 2, 3 the next.
    assert stage_mix_by_node(Layout(pipe=4, row=2), 4) == ((2, 2, 0, 0), (2, 2, 0, 0), (0, 0, 2, 2), (0, 0, 2, 2))
    # data=2 x pipe=4 on one node of 8: two ranks of every stage.
    assert stage_mix_by_node(Layout(data=2, pipe=4), 8) == ((2, 2, 2, 2),) * 4
    assert stage_mix_by_node(Layout(pipe=2, col=4), 4) == ((4, 0), (0, 4))


def test_shared_core_replay_by_hand():
    """p = 2, m = 2, forward 1 and backward 2 on both stages. Stage 0 runs F0 F1 B0 B1, stage 1
    F0 B0 F1 B1. With one core of its own per stage: 9 (F0 0-1; F1 and F0 1-2; B0 2-4; B0 4-6 and
    F1 4-5; B1 5-7; B1 7-9). Both stages' ranks on one core (f = 2), a lone busy stage running at
    twice the shared price: F0 0-0.5; F1, F0 to 1.5; stage 1's B0 alone to 2.5; B0 and F1 together,
    F1 done at 3.5; B0 and B1 together, B0 done at 4.5; B1 alone to 5; B1 alone to 6."""
    orders = [[("F", 0), ("F", 1), ("B", 0), ("B", 1)], [("F", 0), ("B", 0), ("F", 1), ("B", 1)]]
    own = shared_core_replay(orders, [1.0, 1.0], [2.0, 2.0], ((1, 0), (0, 1)), 2.0)
    shared = shared_core_replay(orders, [1.0, 1.0], [2.0, 2.0], ((1, 1), (1, 1)), 2.0)
    unshared = shared_core_replay(orders, [1.0, 1.0], [2.0, 2.0], ((1, 1), (1, 1)), 1.0)
    assert (own, shared, unshared) == (pytest.approx(9.0), pytest.approx(6.0), pytest.approx(9.0))


def test_lent_compute_factor_by_hand():
    # 4 + 4 ranks on 2 cores (f = 4), compute 1 s, comm 1 s of which 0.5 s asleep:
    # asleep z = 0.5 / (k + 1), demand 4 + 4 (1 - z) > 2, so k = demand / 8 = 1 - 0.25 / (k + 1),
    # k^2 = 0.75.
    assert lent_compute_factor(1.0, 1.0, 0.5, 4, 4, 4.0) == pytest.approx(math.sqrt(0.75), rel=1e-9)
    # 1 + 3 ranks on 2 cores (f = 2), all comm asleep: at k = 1/2 the demand 1 + 3 k / (k + 3) = 1.43
    # fits the 2 cores, so the stage computes at its solo speed.
    assert lent_compute_factor(1.0, 3.0, 3.0, 1, 3, 2.0) == pytest.approx(0.5, rel=1e-9)
    # Nothing lent: no other stage on the node, own cores, or nobody asleep.
    assert lent_compute_factor(1.0, 1.0, 0.5, 8, 0, 4.0) == 1.0
    assert lent_compute_factor(1.0, 1.0, 0.5, 4, 4, 1.0) == 1.0
    assert lent_compute_factor(1.0, 1.0, 0.0, 4, 4, 4.0) == 1.0


def test_predict_lends_only_to_pipeline_stages():
    shape = ModelShape(layers=8, hidden=128, heads=4, kv_heads=4, ffn=256, vocab=8, seq_len=64)
    setup = TrainingSetup(global_batch=16, seq_len=64, micro_batch=1, dtype="float32", overlap=())
    own_cores, shared = machine_from_dict(MACHINE), machine_from_dict({**MACHINE, "oversubscription": 4})
    compute = ("gemm", "attention", "elementwise")
    # No pipeline: every rank computes and waits in step, so nobody lends.
    for layout in (Layout(data=2, col=4), Layout(depth=2, row=2, col=2)):
        assert predict(shape, layout, shared, setup).breakdown == predict(shape, layout, own_cores, setup).breakdown
    # pipe=2 x col=4 on one node of 8: the other stage's 4 ranks sleep through every blocking
    # col all-reduce (tensor_comm is all sleep here); a pipeline transfer lends nothing (its
    # neighbour waits in the same exchange). Solve the fixed point
    # from the unlent breakdown: k = demand / 8 with demand = 4 + 4 (1 - asleep / (k C + W)).
    # The shared-core replay then scales every part of a slot alike (by g, its own test above).
    layout = Layout(pipe=2, col=4)
    unlent = predict(shape, layout, own_cores, setup).breakdown
    lent = predict(shape, layout, shared, setup).breakdown
    c, asleep = sum(unlent[k] for k in compute), unlent["tensor_comm"]
    w = asleep + unlent["pipeline_p2p"]
    assert asleep > 0.2 * (c + w)
    k = 1.0
    for _ in range(200):
        k = (4 + 4 * (1 - asleep / (k * c + w))) / 8
    g = lent["tensor_comm"] / unlent["tensor_comm"]
    assert 0.9 < g <= 1.0
    for key in compute:
        assert lent[key] == pytest.approx(k * g * unlent[key], rel=1e-6), key
    assert lent["pipeline_p2p"] == pytest.approx(g * unlent["pipeline_p2p"], rel=1e-12)
    for key in ("optimizer", "step_sync"):
        assert lent[key] == pytest.approx(unlent[key], rel=1e-12), key
