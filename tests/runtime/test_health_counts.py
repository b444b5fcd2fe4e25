"""The health monitor's load on the job's one store does not grow with the world size (issue 32):
a steady beat costs each rank two store operations and the beat slows so the whole job stays
within STORE_OPS_PER_S; on SIGTERM each rank checks one neighbour, not the world, and the rank
that finds its neighbour silent names the silent run of ranks after it. Counted against an
in-memory store."""

from __future__ import annotations

import pytest

from axon.runtime.health import FINISHED, NAMED_AT_MOST, STORE_OPS_PER_S, HealthMonitor, beat_interval
from axon.testing.counting_store import CountingStore


def _monitor(rank: int, world: int, dead: set[int], tmp_path) -> HealthMonitor:
    monitor = HealthMonitor(rank, world, ("127.0.0.1", 0), str(tmp_path), peer_timeout_s=30,
                            collective_timeout_s=1.0, hosts_store=False)
    monitor.store = CountingStore(dead)
    monitor.interval = 0.005  # the SIGTERM checks sleep whole beats: short ones here
    return monitor


def _started(rank: int, world: int, tmp_path) -> HealthMonitor:
    """A monitor past start()'s store writes (its own stamp, the keys each beat reads), with the host key
    rank 0 writes, without the thread and the signal set-up."""
    monitor = _monitor(rank, world, set(), tmp_path)
    monitor.store.set(monitor.prefix + "host/0", "node0")
    monitor._beat()
    for key in ("verdict", f"beat/{(rank + 1) % world}"):
        monitor.store.compare_set(monitor.prefix + key, "", "")
    return monitor


def test_a_steady_beat_costs_two_store_operations_at_any_world_size(tmp_path):
    counts = {}
    for world in (8, 4096, 32768):
        monitor = _started(3, world, tmp_path)
        monitor._beat_once()  # the first beat also reads rank 0's host, once
        assert monitor.store_host == "node0"
        before = monitor.store.ops
        monitor._beat_once()
        counts[world] = monitor.store.ops - before
    assert counts[8] == counts[4096] == counts[32768] <= 2, counts


def test_the_beat_slows_so_the_store_load_stays_bounded():
    assert beat_interval(8, 30) == 1.0 and beat_interval(8, 6) == pytest.approx(0.6)  # as before
    for world in (8, 4096, 32768):
        assert world * 2 / beat_interval(world, 30) <= STORE_OPS_PER_S, world
    assert beat_interval(32768, 30) == pytest.approx(3.2768)
    # Detection still fits within peer_timeout_s: stale_after (peer_timeout_s less three beats) > one beat.
    assert 30 - 3 * beat_interval(32768, 30) > beat_interval(32768, 30)


def test_a_peer_timeout_too_short_for_the_world_is_named_with_the_smallest_that_works():
    with pytest.raises(ValueError) as error:
        beat_interval(32768, 13)
    assert str(error.value) == ("train.peer_timeout_s is 13 s, too short for a world of 32768 ranks, whose heartbeats "
                                "are 3.28 s apart to keep the job's store under 20000 operations a second: it must be "
                                "at least 14 s")
    beat_interval(32768, 14)  # the value it names works


def test_a_finished_neighbour_is_not_lost_and_a_beat_after_stop_keeps_it_finished(tmp_path):
    monitor = _started(3, 8, tmp_path)
    neighbour = _monitor(4, 8, set(), tmp_path)
    neighbour.store = monitor.store
    neighbour.stop()
    neighbour._beat()  # the thread's beat racing stop() writes nothing
    assert monitor.store.keys[monitor.prefix + "beat/4"] == FINISHED.encode()
    monitor.started -= 3600  # long past stale_after: a stamp it had never written would read lost
    assert not monitor._stale_stamp(monitor._read_existing(["beat/4"])[0])
    assert not monitor._successor_silent()


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
