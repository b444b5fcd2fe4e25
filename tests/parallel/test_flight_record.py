"""The flight record's one schema: what the watchdog writes is what diagnose reads back."""

from __future__ import annotations

import json

from axon.parallel.flight import FaultPlan, FlightRecorder
from axon.parallel.flight_record import (DONE, WAITING, CollectiveRecord, FlightRecord, read_records, record_path,
                                         write_record)
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
