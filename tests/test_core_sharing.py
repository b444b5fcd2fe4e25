"""perfmodel.core_sharing: pipeline stages lending cores while they sleep, against hand-solved cases."""

from __future__ import annotations

import math

import pytest

from perfmodel.core_sharing import lent_compute_factor, stage_mates_on_node
from perfmodel.layout import Layout
from perfmodel.machine import machine_from_dict
from perfmodel.models import ModelShape
from perfmodel.predict import predict
from perfmodel.training import TrainingSetup

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
    layout = Layout(pipe=2, col=4)
    unlent = predict(shape, layout, own_cores, setup).breakdown
    lent = predict(shape, layout, shared, setup).breakdown
    c, asleep = sum(unlent[k] for k in compute), unlent["tensor_comm"]
    w = asleep + unlent["pipeline_p2p"]
    assert asleep > 0.2 * (c + w)
    k = 1.0
    for _ in range(200):
        k = (4 + 4 * (1 - asleep / (k * c + w))) / 8
    for key in compute:
        assert lent[key] == pytest.approx(k * unlent[key], rel=1e-6), key
    for key in ("tensor_comm", "pipeline_p2p", "optimizer", "step_sync"):
        assert lent[key] == pytest.approx(unlent[key], rel=1e-12), key
