"""Every group of an axis placed: the slowest group sets the pace, NICs shared per node.

The hand counts list each group of the layout's rank order and the nodes it touches; a
node's NICs are shared by one ring stream per group that leaves the node and touches it.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from perfmodel.collectives import busiest_node_streams, collective_time, group_placement
from axon.spec.layout import AXES, Layout
from perfmodel.machine import machine_from_dict

BASE = dict(name="hand", devices_per_node=4, memory_gb=40, peak_tflops={"float32": 10, "bfloat16": 100},
            memory_bandwidth_gbs=1000, intra_node={"bandwidth_gbs": 100, "latency_us": 2},
            inter_node={"bandwidth_gbs": 25, "latency_us": 5}, nics_per_node=4,
            gemm_efficiency=[[1e6, 0.2], [1e8, 0.6]])
FOUR = machine_from_dict(BASE)  # 4 devices, 4 NICs of 25 GB/s per node
EIGHT = machine_from_dict({**BASE, "devices_per_node": 8})  # 8 devices, 4 NICs
ONE_NIC = machine_from_dict({**BASE, "nics_per_node": 1})  # 4 devices share one NIC
TWO_NICS = machine_from_dict({**BASE, "nics_per_node": 2})


def test_col_3_on_4_device_nodes_straddles_and_is_priced_by_the_busiest_node():
    # data=4 x col=3 (col fastest), nodes {0-3}, {4-7}, {8-11}. Col groups:
    #   {0,1,2} node 0 | {3,4,5} nodes 0,1 | {6,7,8} nodes 1,2 | {9,10,11} node 2.
    # Two groups leave their node; node 1 is touched by both: 2 streams share its 4 NICs.
    col = group_placement(Layout(data=4, col=3), ("col",), FOUR)
    assert not col.intra and col.nic_streams == 2
    assert col.bandwidth_gbs == pytest.approx(4 * 25 / 2) and col.latency_us == 5
    # Rank 0's group alone would have said "inside a node" (the old rule).
    assert group_placement(Layout(col=3), ("col",), FOUR).intra
    # Data groups (stride 3): {0,3,6,9} nodes 0,0,1,2 | {1,4,7,10} nodes 0,1,1,2 | {2,5,8,11}
    # nodes 0,1,2,2: all three touch every node, 3 streams per node.
    data = group_placement(Layout(data=4, col=3), ("data",), FOUR)
    assert data.nic_streams == 3 and data.bandwidth_gbs == pytest.approx(100 / 3)
    # The slowest group's link prices the whole all-reduce: 2(p-1) a + 2(p-1)/p n / B.
    assert collective_time("all_reduce", 3e8, col, FOUR) == pytest.approx(4 * 5e-6 + 4 / 3 * 3e8 / 50e9)


def test_row_6_by_col_2_on_8_device_nodes():
    # data=2 x row=6 x col=2, strides col 1, row 2, data 12; nodes {0-7}, {8-15}, {16-23}.
    layout = Layout(data=2, row=6, col=2)
    # Row groups: (data 0, col 0) {0,2,4,6,8,10} and (0, 1) {1,3,...,11} touch nodes 0,1;
    # (1, 0) {12,...,22} and (1, 1) {13,...,23} touch nodes 1,2. Node 1 meets all four.
    row = group_placement(layout, ("row",), EIGHT)
    assert row.nic_streams == 4 and row.bandwidth_gbs == pytest.approx(4 * 25 / 4)
    # Col groups {2k, 2k+1} never cross a node boundary (8 is even).
    assert group_placement(layout, ("col",), EIGHT).intra
    # Row x col groups: {0-11} on nodes 0,1 and {12-23} on nodes 1,2: node 1 sends 2 streams.
    both = group_placement(layout, ("row", "col"), EIGHT)
    assert both.size == 12 and both.nic_streams == 2 and both.bandwidth_gbs == pytest.approx(50)
    # Data groups {r, r+12}: r 0-3 nodes 0,1; r 4-7 nodes 0,2; r 8-11 nodes 1,2: 8 per node.
    data = group_placement(layout, ("data",), EIGHT)
    assert data.nic_streams == 8 and data.bandwidth_gbs == pytest.approx(12.5)


def test_data_spread_over_nodes_with_shared_nics():
    # data=8 x col=2 on 4-device nodes with one NIC. Data groups (stride 2): {0,2,...,14} and
    # {1,3,...,15}, each 2 ranks on every one of the 4 nodes: 2 streams share the one NIC.
    spread = group_placement(Layout(data=8, col=2), ("data",), ONE_NIC)
    assert spread.nic_streams == 2 and spread.bandwidth_gbs == pytest.approx(25 / 2)
    # Data innermost: {0-7} on nodes 0,1 and {8-15} on nodes 2,3, one stream per node.
    inner = group_placement(Layout(data=8, col=2, order=("col", "pipe", "depth", "row", "data")), ("data",), ONE_NIC)
    assert inner.nic_streams == 1 and inner.bandwidth_gbs == pytest.approx(25)
    # data=3 innermost, col=2 outside, 2 NICs: {0,1,2} inside node 0, {3,4,5} on nodes 0,1:
    # one stream per node, 2 x 25 GB/s, but a slow group all the same.
    odd = group_placement(Layout(data=3, col=2, order=("col", "pipe", "depth", "row", "data")), ("data",), TWO_NICS)
    assert not odd.intra and odd.nic_streams == 1 and odd.bandwidth_gbs == pytest.approx(50)
    # data x depth over 4 x 2 = 8 ranks, data=4 depth=2 col=2 (col fastest): groups are the
    # even ranks {0,2,...,14} and the odd ones, 2 per node on each of 4 nodes: 2 streams.
    loss = group_placement(Layout(data=4, depth=2, col=2), ("data", "depth"), TWO_NICS)
    assert loss.size == 8 and loss.nic_streams == 2 and loss.bandwidth_gbs == pytest.approx(2 * 25 / 2)


def _brute_force_streams(layout: Layout, axes: tuple[str, ...], per_node: int) -> int:
    """Every group from Layout.groups (the engine's rule), every node counted."""
    streams = Counter()
    for group in layout.groups(axes):
        nodes = {rank // per_node for rank in group}
        if len(nodes) > 1:
            streams.update(nodes)
    return max(streams.values(), default=0)


def test_the_periodic_window_counts_like_every_group_of_the_world():
    rng = random.Random(15)
    checked = 0
    while checked < 400:
        sizes = {axis: rng.choice([1, 1, 2, 3, 4, 5, 6, 8]) for axis in AXES}
        layout = Layout(**sizes, order=tuple(rng.sample(AXES, 5)))
        axes = tuple(rng.sample(AXES, rng.choice([1, 1, 2])))
        if layout.world_size > 2000 or all(getattr(layout, a) == 1 for a in axes):
            continue
        per_node = rng.choice([2, 3, 4, 6, 8])
        strides = layout.strides()
        members = tuple(sorted((getattr(layout, a), strides[a]) for a in axes if getattr(layout, a) > 1))
        assert busiest_node_streams(members, layout.world_size, per_node) == \
            _brute_force_streams(layout, axes, per_node), (layout, axes, per_node)
        checked += 1


def test_even_layouts_keep_the_per_group_rule():
    # Groups that tile nodes evenly: D / (members per node) streams, as before this change.
    frontier_like = machine_from_dict({**BASE, "devices_per_node": 8})
    for layout, axes, streams in ((Layout(data=16, row=8), ("data",), 8),  # one member per node
                                  (Layout(data=4, depth=4, col=4), ("depth",), 4),  # 2 per node: 8 / 2
                                  (Layout(col=16), ("col",), 1)):  # whole nodes
        place = group_placement(layout, axes, frontier_like)
        assert place.nic_streams == streams and place.bandwidth_gbs == pytest.approx(min(100, 100 / streams))


def test_rings_leaving_a_dragonfly_group_share_its_links():
    # 2 nodes of 4 devices per dragonfly group (8 ranks), 40 GB/s out of a group. data=4 x depth=8,
    # depth fastest: depth groups are ranks 0-7, 8-15, ... = one dragonfly group each, so they leave no
    # group; data groups {0,8,16,24}, {1,9,17,25}, ... hop one dragonfly group per member: all 8 rings
    # touching group 0 leave it, 40 / 8 = 5 GB/s per rank, below the NIC share (4 x 25 / 4 streams = 25).
    fly = machine_from_dict({**BASE, "dragonfly_group_nodes": 2, "dragonfly_group_egress_gbs": 40})
    layout = Layout(data=4, depth=8)
    data, depth = group_placement(layout, ("data",), fly), group_placement(layout, ("depth",), fly)
    assert (data.group_streams, data.nic_streams, data.bandwidth_gbs) == (8, 4, 5.0)
    assert (depth.group_streams, depth.nic_streams, depth.bandwidth_gbs) == (0, 1, 100.0)
    # Without the dragonfly figures the same data rings get the NIC share.
    assert group_placement(layout, ("data",), FOUR).bandwidth_gbs == 25.0


def test_all_reduce_takes_the_tree_where_the_library_has_one():
    # 4,096 ranks across nodes at 5 us and 25 GB/s (FOUR's NICs shared by one stream each: 100 GB/s here), 1 KB:
    # ring 2 x 4095 x 5 us = 40.95 ms (+ bandwidth); tree 2 x 12 x 5 us = 120 us + 2 KB / 100 GB/s.
    tree = machine_from_dict({**BASE, "tree_all_reduce": True})
    place = group_placement(Layout(data=4096), ("data",), tree)
    assert collective_time("all_reduce", 1e3, place, tree) == pytest.approx(120e-6 + 2e3 / (place.bandwidth_gbs * 1e9))
    assert collective_time("all_reduce", 1e3, place, FOUR) == pytest.approx(
        2 * 4095 * 5e-6 + 2 * 4095 / 4096 * 1e3 / (place.bandwidth_gbs * 1e9))
    # A large buffer on 2 ranks: the ring's half-size transfers win, as NCCL's tuner would pick.
    two = group_placement(Layout(data=2), ("data",), tree)
    assert collective_time("all_reduce", 1e9, two, tree) == collective_time("all_reduce", 1e9, two, FOUR)
    # all-gather has no tree in NCCL: unchanged.
    assert collective_time("all_gather", 1e3, place, tree) == collective_time("all_gather", 1e3, place, FOUR)
