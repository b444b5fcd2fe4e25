"""On SIGTERM each rank checks one neighbour, not the world (issue 32): the store operations a
rank makes do not grow with the world size, and the rank that finds its neighbour silent names
the silent run of ranks after it. Counted against an in-memory store."""

from __future__ import annotations

import time

from axon.runtime.health import NAMED_AT_MOST, HealthMonitor


class CountingStore:
    """The TCPStore calls the monitor makes; a live rank's stamp moves at every read, a dead one has none."""

    def __init__(self, dead: set[int]):
        self.keys, self.dead, self.ops = {}, dead, 0

    def _value(self, key: str):
        if "/beat/" in key:
            rank = int(key.rsplit("/", 1)[1])
            return None if rank in self.dead else str(time.monotonic_ns()).encode()
        return self.keys.get(key)

    def set(self, key, value):
        self.ops += 1
        self.keys[key] = str(value).encode()

    def check(self, keys):
        self.ops += 1
        return all(self._value(k) is not None for k in keys)

    def get(self, key):
        self.ops += 1
        return self._value(key)


def _monitor(rank: int, world: int, dead: set[int], tmp_path) -> HealthMonitor:
    monitor = HealthMonitor(rank, world, ("127.0.0.1", 0), str(tmp_path), peer_timeout_s=0.05,
                            collective_timeout_s=1.0, hosts_store=False)
    monitor.store = CountingStore(dead)
    return monitor


def test_a_sigterm_check_costs_the_same_store_operations_at_any_world_size(tmp_path):
    counts = {}
    for world in (8, 4096, 32768):
        monitor = _monitor(3, world, set(), tmp_path)
        assert not monitor._successor_silent()
        counts[world] = monitor.store.ops
    assert counts[8] == counts[4096] == counts[32768] <= 10, counts


def test_the_rank_before_a_dead_node_names_all_of_it(tmp_path):
    monitor = _monitor(3, 32768, dead={4, 5, 6, 7}, tmp_path=tmp_path)
    assert monitor._successor_silent()
    before = monitor.store.ops
    assert monitor._silent_run() == [4, 5, 6, 7]  # rank 8 beats: the run ends there
    assert monitor.store.ops - before <= 4 * NAMED_AT_MOST + 2  # bounded, whatever the world
    # Every rank of a small world dead but this one: the run wraps around and stops before it.
    alone = _monitor(2, 5, dead={0, 1, 3, 4}, tmp_path=tmp_path)
    assert alone._successor_silent() and alone._silent_run() == [3, 4, 0, 1]
