"""Grid coordinates and groups, including a 32,768-rank grid under torch's fake backend."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import axon.parallel.groups as groups_module
from axon.parallel.grid import Grid
from axon.spec.layout import AXES, Layout, factorizations
from axon.testing.spawn import run_distributed

REPO = Path(__file__).resolve().parents[2]


def test_default_order_puts_col_fastest():
    layout = Layout(data=2, depth=2, row=2, col=2)
    assert [layout.coords(r)["col"] for r in range(4)] == [0, 1, 0, 1]
    assert [layout.coords(r)["row"] for r in range(4)] == [0, 0, 1, 1]
    assert layout.coords(15) == {"data": 1, "pipe": 0, "depth": 1, "row": 1, "col": 1}
    assert all(layout.rank_of(layout.coords(r)) == r for r in range(16))


def test_custom_order():
    layout = Layout(data=4, col=2, order=("col", "pipe", "depth", "row", "data"))
    assert [layout.coords(r)["data"] for r in range(4)] == [0, 1, 2, 3]  # data is now fastest


def test_factorizations_count():
    # ordered factorizations of 8 = 2^3 into 4 factors: C(3+3, 3) = 20; of 12 = 2^2 * 3: C(5,3) * C(4,3) = 40
    assert len(factorizations(8, ("data", "depth", "row", "col"))) == 20
    assert len(factorizations(12, ("data", "depth", "row", "col"))) == 40
    assert all(l.world_size == 12 for l in factorizations(12))


def brute_force_groups(layout: Layout, axes: tuple[str, ...]) -> list[list[int]]:
    """Ranks grouped by their coordinates on every other axis, each group in rank order (as torch keeps it)."""
    groups: dict[tuple, list[int]] = {}
    for rank in range(layout.world_size):
        coords = layout.coords(rank)
        groups.setdefault(tuple(coords[a] for a in AXES if a not in axes), []).append(rank)
    return sorted(groups.values())


ODD_LAYOUTS = [Layout(data=2, pipe=3, depth=2, row=1, col=5),
               Layout(data=3, pipe=2, depth=2, row=2, col=2, order=("col", "depth", "row", "data", "pipe"))]


@pytest.mark.parametrize("layout", ODD_LAYOUTS, ids=str)
def test_layout_groups_partition_the_world_by_coordinates(layout):
    for axes in [(axis,) for axis in AXES] + [("data", "depth")]:
        assert layout.groups(axes) == brute_force_groups(layout, axes), axes
    for axis in AXES:  # along one axis, rank order is coordinate order: group rank i has coordinate i
        assert all([layout.coords(r)[axis] for r in group] == list(range(layout.sizes()[axis]))
                   for group in layout.groups((axis,))), axis


@pytest.fixture
def fake_world():
    """A fake default process group of the asked size, destroyed after the test."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    yield lambda world, rank: dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", ODD_LAYOUTS + [Layout(data=4, depth=1, row=2), Layout(data=1, pipe=2, depth=3)],
                         ids=str)
def test_a_device_bound_world_makes_each_axis_with_one_split(layout, fake_world, monkeypatch):
    """Where new_group would split the world's communicator (NCCL with a bound device),
    each axis and the data+depth group come from one split_group of the complete partition."""
    rank = layout.world_size - 2
    fake_world(layout.world_size, rank)
    splits = []

    def split_group(split_ranks, timeout=None, group_desc=None):
        splits.append((group_desc, split_ranks))
        mine = next(ranks for ranks in split_ranks if rank in ranks)
        return real_new_group(mine, use_local_synchronization=True)  # a real (fake-backend) group to return

    real_new_group = dist.new_group
    monkeypatch.setattr(groups_module, "splits_world", lambda: True)
    monkeypatch.setattr(dist, "split_group", split_group, raising=False)  # torch < 2.5 has none
    monkeypatch.setattr(dist, "new_group", lambda *a, **k: pytest.fail("new_group called on a splitting world"))
    grid = Grid(layout, rank)

    expected = [(f"axon_{axis}", (axis,)) for axis in AXES if layout.sizes()[axis] > 1]
    if layout.data > 1 and layout.depth > 1:
        expected.append(("axon_data+depth", ("data", "depth")))
    assert [desc for desc, _ in splits] == [desc for desc, _ in expected]
    for (_, split_ranks), (_, axes) in zip(splits, expected):
        assert split_ranks == brute_force_groups(layout, axes)
    for axis in AXES + ("data+depth",):
        group = grid.axis(axis).group
        axes = ("data", "depth") if axis == "data+depth" else (axis,)
        if grid.axis(axis).size == 1:
            assert group is None, axis
        else:
            mine = next(ranks for ranks in brute_force_groups(layout, axes) if rank in ranks)
            assert dist.get_process_group_ranks(group) == mine, axis


def test_a_gloo_world_is_not_split():
    """gloo (like the fake backend, or NCCL without a bound device) does not split the world's
    communicator: new_group talks only to the group's members, so groups are made one by one."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert not groups_module.splits_world()
    finally:
        dist.destroy_process_group()


def rebuilt_grids(rank, world):
    """Build, use and destroy the same grid three times, as tests and sweeps do in one process
    (groups named after their ranks would meet the destroyed groups' store keys: groups.py)."""
    out = []
    for build in range(3):
        grid = Grid(Layout(data=2, depth=2, col=2), rank)
        sums = {}
        for axis in ("data", "depth", "col", "data+depth"):
            value = torch.tensor([float(rank + build)])
            dist.all_reduce(value, group=grid.axis(axis).group)
            sums[axis] = value.item()
        out.append(sums)
        grid.destroy()
    return out


def test_grid_rebuilt_in_one_process_reduces_over_its_groups():
    results = run_distributed(8, rebuilt_grids)
    layout = Layout(data=2, depth=2, col=2)
    for rank, builds in enumerate(results):
        for build, sums in enumerate(builds):
            for axis, total in sums.items():
                axes = ("data", "depth") if axis == "data+depth" else (axis,)
                ranks = next(g for g in layout.groups(axes) if rank in g)
                assert total == sum(r + build for r in ranks), (rank, build, axis)


FAKE_GRID = r"""
import json, sys, time, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
sys.path.insert(0, sys.argv[1])
import axon.parallel.groups as groups_module
from axon.parallel.grid import Grid
from axon.spec.layout import AXES, Layout
rank, layout = 20_001, Layout(data=16, pipe=4, depth=8, row=8, col=8)
dist.init_process_group("fake", rank=rank, world_size=32768, store=FakeStore())
real_new_group = dist.new_group
calls = {"new_group": 0, "member": 0, "split_group": 0, "split_ranks_complete": 0}
def new_group(ranks, **kwargs):
    calls["new_group"] += 1
    calls["member"] += rank in ranks
    return real_new_group(ranks, **kwargs)
def split_group(split_ranks, **kwargs):  # what NCCL would do, built from the fake backend
    calls["split_group"] += 1
    calls["split_ranks_complete"] += sorted(r for g in split_ranks for r in g) == list(range(32768))
    return real_new_group(next(g for g in split_ranks if rank in g), use_local_synchronization=True)
dist.new_group, dist.split_group = new_group, split_group
def build():
    start = time.perf_counter()
    grid = Grid(layout, rank)
    elapsed = time.perf_counter() - start
    ranks = {a: dist.get_process_group_ranks(grid.axis(a).group) for a in AXES + ("data+depth",)}
    return {"build_s": elapsed, "world_splits": groups_module.splits_world(), "coords": grid.coords, "ranks": ranks}
plain = {**build(), **calls}
calls.update(dict.fromkeys(calls, 0))
groups_module.splits_world = lambda: True
split = {**build(), **calls}
print(json.dumps({"plain": plain, "split": split}))
"""


def test_grid_of_32768_ranks_builds_fast_under_fake_backend():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FAKE_GRID, str(REPO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    runs = json.loads(out.stdout.strip().splitlines()[-1])
    plain, split = runs["plain"], runs["split"]
    # strides col 1, row 8, depth 64, pipe 512, data 2048: 20001 = 9*2048 + 3*512 + 0*64 + 4*8 + 1
    for run in (plain, split):
        assert run["build_s"] < 30, f"grid construction took {run['build_s']} s"
        assert run["coords"] == {"data": 9, "pipe": 3, "depth": 0, "row": 4, "col": 1}
        groups = run["ranks"]
        assert groups["col"] == list(range(20000, 20008))
        assert groups["row"] == [19969 + 8 * i for i in range(8)]
        assert groups["depth"] == [20001 + 64 * i for i in range(8)]
        assert groups["pipe"] == [18465 + 512 * i for i in range(4)]
        assert groups["data"] == [1569 + 2048 * i for i in range(16)]
        assert groups["data+depth"] == sorted(d + e for d in groups["data"] for e in range(0, 512, 64))
    # Without a bound device no group creation splits the world: a rank communicates only while
    # creating the 6 groups it belongs to (5 axes and data+depth); the other calls are bookkeeping.
    assert not plain["world_splits"]
    assert (plain["member"], plain["split_group"]) == (6, 0)
    assert plain["new_group"] == 32768 // (16 * 8) + sum(32768 // n for n in (16, 4, 8, 8, 8))  # 22,784 groups
    # Where groups split the world, the whole grid costs 6 world-wide splits, not 22,784.
    assert (split["split_group"], split["split_ranks_complete"], split["new_group"]) == (6, 6, 0)
    assert time.perf_counter() - start < 60
