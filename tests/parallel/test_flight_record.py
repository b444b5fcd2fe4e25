"""The flight record's one schema: what the watchdog writes is what diagnose reads back."""

from __future__ import annotations

import json

from axon.parallel.flight import FaultPlan, FlightRecorder
from axon.parallel.flight_record import (DONE, ISSUED, WAITING, CollectiveRecord, FlightRecord, read_records,
                                         record_path, write_record)
from axon.runtime.diagnose import diagnose


def test_a_hand_made_record_comes_back_equal(tmp_path):
    record = FlightRecord(
        rank=3, world=4, host="node1", reason="hung", time=1700000000.25,
        coords={"data": 0, "pipe": 0, "depth": 1, "row": 0, "col": 1}, step=7, in_step=True, issued=12, idle_s=9.5,
        entries=(CollectiveRecord(index=10, step=6, step_index=1, op="all_reduce", axis="col", group=(2, 3), seq=5,
                                  bytes=256, state=DONE, age_s=10.0),
                 CollectiveRecord(index=11, step=7, step_index=0, op="all_gather", axis="depth", group=(1, 3), seq=6,
                                  bytes=4096, state=WAITING, age_s=9.5)))
    path = write_record(tmp_path, record)
    assert path == record_path(tmp_path, 3) and not list(tmp_path.glob("*.tmp"))
    assert read_records(tmp_path) == {3: record}


def test_what_the_recorder_writes_diagnose_reads(tmp_path):
    """Two ranks of one stage: rank 0 waits in step 2's all-gather, rank 1 never issued it."""
    for rank in (0, 1):
        recorder = FlightRecorder(rank=rank, faults=FaultPlan())
        recorder.begin_step(1)
        recorder.done(recorder.issue("all_reduce", "col", (0, 1), 256, blocking=True))
        recorder.end_step()
        recorder.begin_step(2)
        if rank == 0:
            recorder.issue("all_gather", "depth", (0, 1), 4096, blocking=True)
        record = recorder.record(world=2, reason="hung", host=f"node{rank}",
                                 coords={"data": 0, "pipe": 0, "depth": 0, "row": 0, "col": rank})
        write_record(tmp_path, record)
        assert read_records(tmp_path)[rank] == record
    written = json.loads(record_path(tmp_path, 0).read_text())
    assert written["entries"][-1]["state"] == WAITING and written["entries"][-1]["group"] == [0, 1]
    lines = diagnose(tmp_path)
    assert lines[0] == f"2 of 2 ranks wrote flight records in {tmp_path}; why: hung (2)"
    assert lines[1:3] == ["first difference: collective #0 of step 2:",
                          "  rank 0 issued all_gather on axis depth (4096 B; group [0,1])"]
    assert lines[3].startswith("  rank 1 never arrived (its last was collective #0 of step 1, all_reduce on axis col")


def _two_stage_exchange(rank, world):
    """Two batches between stages 0 and 1 through axon.parallel.p2p, under gloo: both issued,
    then the second one's receive waited for (which finishes the first), then the rest."""
    import torch
    import torch.distributed as dist

    from axon.parallel.p2p import InFlight
    from axon.parallel.trace import Axis, CommTrace

    axis = Axis("pipe", dist.group.WORLD, world, CommTrace())
    axis.trace.enabled = True
    flight = axis.trace.flight
    flight.begin_step(1)
    peer = 1 - rank
    act = torch.full((2, 3), float(rank))
    grad = torch.full((2, 3), float(rank), dtype=torch.bfloat16)
    in_flight = InFlight()
    in_flight.issue([("send", act, peer, "act 0 v0>v1")] if rank == 0 else [("recv", act, peer, "act 0 v0>v1")], axis)
    second = in_flight.issue([("recv", grad, peer, "grad 0 v1>v0"), ("send", act, peer, "act 1 v0>v1")] if rank == 0
                             else [("send", grad, peer, "grad 0 v1>v0"), ("recv", act, peer, "act 1 v0>v1")], axis)
    states = [[e.state for e in flight.entries]]
    in_flight.wait(second, 0 if rank == 0 else 1)  # the receive
    states.append([e.state for e in flight.entries] + [len(in_flight), axis.trace.unwaited])
    received = (grad if rank == 0 else act).tolist()
    in_flight.finish()
    states.append([e.state for e in flight.entries] + [len(in_flight), axis.trace.unwaited])
    flight.end_step()
    events = [(e.op, e.args["batch"], e.args["seq"], e.args["label"]) for e in axis.trace.take()]
    return (flight.record(world=world, reason="test", coords={"pipe": rank}).to_json(), states, received, events)


def test_a_p2p_batch_is_one_entry_with_its_transfers_and_completes_after_its_wait():
    from axon.testing.spawn import run_distributed

    results = run_distributed(2, _two_stage_exchange)
    for rank, (data, states, received, events) in enumerate(results):
        record = FlightRecord.from_json(data)
        assert [(e.op, e.axis, e.group, e.step, e.step_index, e.seq, e.state) for e in record.entries] == [
            ("p2p", "pipe", (0, 1), 1, 0, 0, DONE), ("p2p", "pipe", (0, 1), 1, 1, 1, DONE)]
        # asynchronous entries: issued; waiting for the second batch's receive finished the first
        # batch (waits go in issue order) and left the second one's send issued; then nothing is left
        assert states == [[ISSUED, ISSUED], [DONE, ISSUED, 1, 1], [DONE, DONE, 0, 0]]
        assert received == [[1.0 - rank] * 3] * 2  # the peer's tensor, waited for before it is read
        first, second = record.entries
        assert [(op.kind, op.peer, op.n, op.shape, op.dtype, op.bytes) for op in first.ops] == [
            ("send" if rank == 0 else "recv", 1 - rank, 0, (2, 3), "float32", 24)]
        assert [(op.kind, op.n, op.dtype, op.label) for op in second.ops] == (
            [("recv", 0, "bfloat16", "grad 0 v1>v0"), ("send", 1, "float32", "act 1 v0>v1")] if rank == 0 else
            [("send", 0, "bfloat16", "grad 0 v1>v0"), ("recv", 1, "float32", "act 1 v0>v1")])
        assert first.bytes == 24 and second.bytes == 12 + 24 and record.issued == 2
        # the trace has every transfer once, in issue order, as the deadlock checker reads them
        assert [(op, batch, seq) for op, batch, seq, _ in events] == (
            [("send", 0, 0), ("recv", 1, 1), ("send", 1, 2)] if rank == 0 else
            [("recv", 0, 0), ("send", 1, 1), ("recv", 1, 2)])


def test_a_p2p_batch_waits_from_its_wait_and_is_named_by_the_watchdog(tmp_path):
    recorder = FlightRecorder(rank=1, faults=FaultPlan())
    recorder.begin_step(5)
    entry_ = recorder.issue("p2p", "pipe", (0, 1), 64, blocking=False,
                            transfers=(("recv", 0, (2, 8), "bfloat16", 32, "act 0 v0>v1"),
                                       ("send", 0, (2, 8), "bfloat16", 32, "grad 3 v1>v0")))
    assert entry_.state == ISSUED and not recorder.stuck(-1).startswith("p2p")  # issued: not a wait yet
    recorder.waiting(entry_)  # the receive is waited for
    assert entry_.state == WAITING and recorder.stuck(60) is None
    assert recorder.stuck(-1).startswith("p2p on axis pipe (recv from 0 [2,8] bfloat16 (act 0 v0>v1); send to 0 "
                                         "[2,8] bfloat16 (grad 3 v1>v0), 64 B, collective #0 of step 5) has waited")
    write_record(tmp_path, recorder.record(world=2, reason="hung"))
    assert read_records(tmp_path)[1].entries[0].ops[0].shape == (2, 8)  # the transfers survive the file
    recorder.waited(entry_)  # the receive came; the send is still to be waited for
    assert entry_.state == ISSUED and not recorder.stuck(-1).startswith("p2p")
    recorder.waiting(entry_)
    recorder.done(entry_)
    assert entry_.state == DONE and recorder.stuck(-1).startswith("step 5 has issued or finished no collective")
    # the next batch's transfers count on per (kind, peer); a collective on the pipe group keeps its own seq
    recorder.issue("p2p", "pipe", (0, 1), 32, blocking=True, transfers=(("recv", 0, (2, 8), "bfloat16", 32, ""),))
    assert [op.n for op in recorder.record(world=2, reason="").entries[-1].ops] == [1]
    assert recorder.issue("broadcast", "pipe", (0, 1), 8, blocking=True).seq == 0


def test_a_p2p_fault_point_acts_on_the_first_batch_only():
    recorder = FlightRecorder(rank=0, faults=FaultPlan.parse("skip:rank=0:step=2:at=p2p"))
    recorder.begin_step(2)
    assert recorder.issue("all_reduce", "col", (0, 1), 8, blocking=True) is not None  # collectives: not this point
    batch = (("send", 1, (1,), "float32", 4, ""),)
    assert recorder.issue("p2p", "pipe", (0, 1), 4, blocking=False, transfers=batch) is None  # asynchronous, yet skipped
    assert recorder.issue("p2p", "pipe", (0, 1), 4, blocking=False, transfers=batch) is not None


def test_a_checkpoint_barrier_has_the_watchdogs_longer_patience():
    """The checkpoint axis's barrier (allowed_wait_s, the group's own one-hour timeout) is not
    hung after train.collective_timeout_s, only after its allowance; a step collective is."""
    recorder = FlightRecorder(rank=0, faults=FaultPlan())
    barrier = recorder.issue("barrier", "checkpoint", (0, 1, 2, 3), 0, blocking=True, allowed_wait_s=3600.0)
    barrier.since -= 700.0  # waiting 700 s, past a 600 s collective timeout
    assert recorder.stuck(600.0) is None
    barrier.since -= 3000.0  # 3,700 s: past its allowance too
    assert recorder.stuck(600.0).startswith("barrier on axis checkpoint (ranks 0,1,2,3, 0 B")
    recorder.done(barrier)
    step_collective = recorder.issue("all_reduce", "row", (0, 1), 8, blocking=True)
    step_collective.since -= 700.0
    assert recorder.stuck(600.0).startswith("all_reduce on axis row")
