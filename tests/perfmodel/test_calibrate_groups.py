"""The calibration's groups, counted under torch's fake backend (no processes): where the backend
splits the world (NCCL with a bound device), each partition costs one world-wide split at any
world size and every group it creates is destroyed; on torch < 2.5, which cannot split a
partition at once, axon refuses NCCL in one sentence instead of splitting once per group."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import axon.parallel.groups as groups_module
from perfmodel.calibrate import measure
from perfmodel.calibrate.measure import measure_collectives, overlap_efficiency, partitions


@pytest.fixture
def fake_world():
    """A fake default process group of the asked size, destroyed after the test."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    yield lambda world, rank: dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    if dist.is_initialized():
        dist.destroy_process_group()


class Bench:
    """Times nothing: a collective 'takes' 1 us plus 1 ns per byte; the overlap's rounds are fixed."""

    device, cuda = torch.device("cpu"), False

    def __init__(self, world: int):
        self.world = world

    def seconds(self, fn, local=False):
        return 1e-3

    def interleaved(self, fns, rounds):
        return [[1e-3, 1e-3, 1.5e-3]] * rounds


@pytest.mark.parametrize("world,per_node", [(8, 4), (64, 8)])
def test_each_partition_is_one_world_split_and_every_group_is_destroyed(world, per_node, fake_world, monkeypatch):
    rank = world - 3
    fake_world(world, rank)
    hosts = [f"node{r // per_node}" for r in range(world)]
    parts = partitions(hosts)
    real_new_group, real_destroy = dist.new_group, dist.destroy_process_group
    splits, created, destroyed = [], [], []

    def split_group(split_ranks, timeout=None, group_desc=None):  # what NCCL does, from the fake backend
        splits.append(split_ranks)
        mine = next(ranks for ranks in split_ranks if rank in ranks)
        created.append(real_new_group(mine, use_local_synchronization=True))
        return created[-1]

    def destroy_process_group(group=None):
        assert group is not None and group is not dist.group.WORLD, "the calibration destroyed the world group"
        destroyed.append(group)
        real_destroy(group)

    monkeypatch.setattr(groups_module, "splits_world", lambda: True)
    monkeypatch.setattr(dist, "split_group", split_group, raising=False)
    monkeypatch.setattr(dist, "new_group", lambda *a, **k: pytest.fail("new_group (a split per group) called"))
    monkeypatch.setattr(dist, "destroy_process_group", destroy_process_group)
    monkeypatch.setattr(measure, "latency_between_compute", lambda bench, group, p: 0.0)

    fits, kept, _ = measure_collectives(Bench(world), parts, rank, quick=True)
    intra = max(p for place, p in parts if place == "intra")
    assert list(kept) == [("intra", intra)]
    overlap_efficiency(Bench(world), kept[("intra", intra)], intra, fits["all_reduce"]["intra"][intra],
                       [((32, 32, 32), 1e-4)], "float32", quick=True)

    below_world = [groups for groups in parts.values() if len(groups) > 1]  # the world's own is dist.group.WORLD
    assert splits == below_world  # one split per partition, each the complete partition
    assert all(sorted(r for g in groups for r in g) == list(range(world)) for groups in splits)
    assert len(splits) == len(parts) - 1 == {8: 3, 64: 8}[world]
    # One new_group per group, as before, was a world-wide split each: 10 at 8 ranks, 118 at 64.
    assert sum(len(groups) for groups in below_world) == {8: 10, 64: 118}[world]
    # Each created group destroyed once: the overlap's last, after overlap_efficiency measured on it.
    assert len(destroyed) == len(created) and {id(g) for g in destroyed} == {id(g) for g in created}
    assert destroyed[-1] is kept[("intra", intra)]


def test_create_groups_refuses_a_splitting_world_without_split_group(fake_world, monkeypatch):
    fake_world(4, 1)
    real_new_group = dist.new_group
    monkeypatch.setattr(groups_module, "splits_world", lambda: True)
    monkeypatch.delattr(dist, "split_group", raising=False)  # torch < 2.5
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    monkeypatch.setattr(dist, "new_group", lambda *a, **k: pytest.fail("new_group called before refusing"))
    with pytest.raises(RuntimeError, match=r"^torch 2\.4\.1 on NCCL creates each group by splitting the world "
                                           r"communicator; axon needs torch >= 2\.5 \(dist\.split_group\) for NCCL runs"):
        groups_module.create_groups([[0, 1], [2, 3]], 1, desc="axon_col")
    # Where new_group does not split the world (gloo, fake, NCCL without a bound device), the same
    # torch still makes the groups one by one.
    monkeypatch.setattr(groups_module, "splits_world", lambda: False)
    monkeypatch.setattr(dist, "new_group", real_new_group)
    mine = groups_module.create_groups([[0, 1], [2, 3]], 1, desc="axon_col")
    assert dist.get_process_group_ranks(mine) == [0, 1]
