"""Grid coordinates and groups, including a 32,768-rank grid under torch's fake backend."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from perfmodel.layout import Layout, factorizations

REPO = Path(__file__).resolve().parents[1]


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


FAKE_GRID = r"""
import sys, time, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
sys.path.insert(0, sys.argv[1])
from axon.grid import Grid
from perfmodel.layout import Layout
rank = 20_001
dist.init_process_group("fake", rank=rank, world_size=32768, store=FakeStore())
start = time.perf_counter()
grid = Grid(Layout(data=16, pipe=4, depth=8, row=8, col=8), rank)
elapsed = time.perf_counter() - start
ranks = {axis: dist.get_process_group_ranks(grid.group(axis)) for axis in ("data", "pipe", "depth", "row", "col")}
print(elapsed)
print(grid.coords)
print(ranks)
"""


def test_grid_of_32768_ranks_builds_fast_under_fake_backend():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FAKE_GRID, str(REPO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    build_s, coords, ranks = out.stdout.strip().splitlines()[-3:]
    assert float(build_s) < 30, f"grid construction took {build_s} s"
    # strides col 1, row 8, depth 64, pipe 512, data 2048: 20001 = 9*2048 + 3*512 + 0*64 + 4*8 + 1
    assert eval(coords) == {"data": 9, "pipe": 3, "depth": 0, "row": 4, "col": 1}
    groups = eval(ranks)
    assert groups["col"] == list(range(20000, 20008))
    assert groups["row"] == [19969 + 8 * i for i in range(8)]
    assert groups["depth"] == [20001 + 64 * i for i in range(8)]
    assert groups["pipe"] == [18465 + 512 * i for i in range(4)]
    assert groups["data"] == [1569 + 2048 * i for i in range(16)]
    assert time.perf_counter() - start < 60
