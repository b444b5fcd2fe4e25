"""python -m axon diagnose: hand-written flight records, then the injected faults end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axon.runtime.diagnose import diagnose
from axon.parallel.flight import FaultPlan, FlightRecorder
from axon.testing.processes import REPO, start_ranks as start, wait_all
from axon.testing.runs import fault_run_config

COLLECTIVE_TIMEOUT = 8


def write_config(folder: Path) -> Path:
    return fault_run_config(folder, peer_timeout_s=6, collective_timeout_s=COLLECTIVE_TIMEOUT)

COORDS = [{"data": 0, "pipe": 0, "depth": r // 2, "row": 0, "col": r % 2} for r in range(4)]
GROUPS = {"col": [(0, 1), (0, 1), (2, 3), (2, 3)], "depth": [(0, 2), (1, 3), (0, 2), (1, 3)]}


def entry(rank, step, index, op, axis, nbytes, state="done", age=0.1):
    return {"index": 100 * step + index, "step": step, "step_index": index, "op": op, "axis": axis,
            "group": list(GROUPS[axis][rank]), "seq": index, "bytes": nbytes, "state": state, "age_s": age}


def write(folder, rank, entries, reason="hung"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank_{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": 4, "host": f"node{rank // 2}", "reason": reason, "coords": COORDS[rank],
         "step": 7, "in_step": True, "entries": entries}))


STEP_6 = [("all_gather", "depth", 4096), ("all_reduce", "col", 256)]


def history(rank):
    return [entry(rank, 6, i, *what) for i, what in enumerate(STEP_6)]


def test_a_rank_that_never_arrived_is_named_with_the_collective(tmp_path):
    flight = tmp_path / "flight"
    for rank in (0, 2, 3):
        write(flight, rank, history(rank) + [entry(rank, 7, 0, "all_gather", "depth", 4096, "waiting", 9.5)])
    write(flight, 1, history(1))  # stalled before step 7
    lines = diagnose(tmp_path, env={})
    assert lines[1:] == [
        "first difference: collective #0 of step 7:",
        "  ranks 0,2,3 issued all_gather on axis depth (4096 B; groups [0,2] [1,3])",
        "  rank 1 never arrived (its last was collective #1 of step 6, all_reduce on axis col "
        "(group of ranks 0,1, 256 B), done)",
        "  -> rank 1 (data 0, pipe 0, depth 0, row 0, col 1, host node0) diverged from 3 peer(s) running the same code"]


def test_a_rank_that_issued_another_collective_is_named(tmp_path):
    for rank in (0, 1, 3):
        write(tmp_path, rank, history(rank) + [entry(rank, 7, 0, "all_reduce", "col", 256, "waiting", 9)])
    write(tmp_path, 2, history(2) + [entry(2, 7, 0, "all_gather", "depth", 4096, "waiting", 9)])
    lines = diagnose(tmp_path, env={})  # the flight folder itself is accepted too
    assert lines[2:] == ["  ranks 0,1,3 issued all_reduce on axis col (256 B; groups [0,1] [2,3])",
                         "  rank 2 issued all_gather on axis depth (4096 B; group [0,2])",
                         "  -> rank 2 (data 0, pipe 0, depth 1, row 0, col 0, host node1) diverged from 3 peer(s) "
                         "running the same code"]


def test_all_waiting_in_one_collective_is_a_stuck_peer_and_missing_ranks_stopped_reporting(tmp_path):
    nccl = tmp_path / "nccl_dumps"
    nccl.mkdir()
    (nccl / "trace_rank_0").write_bytes(b"x")
    for rank in (0, 1, 2):
        write(tmp_path / "flight", rank, history(rank) + [entry(rank, 7, 0, "all_gather", "depth", 4096, "waiting", 9 + rank)])
    lines = diagnose(tmp_path, env={"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(nccl / "trace_rank_")})
    assert lines[0] == f"3 of 4 ranks wrote flight records in {tmp_path / 'flight'}; why: hung (3)"
    assert lines[1:] == [
        "ranks 0,1,2 wait in the same collective #0 of step 7, all_gather on axis depth (group of ranks 0,2, "
        "4096 B), for up to 11.0 s: a stuck peer or a network fault",
        "  rank 3 stopped reporting (no flight record)",
        f"PyTorch NCCL flight-recorder dumps: 1 file(s) {nccl / 'trace_rank_'}*; read them with: "
        f"python -m torch.distributed.flight_recorder.fr_trace {nccl} -p trace_rank_ --allow-incomplete-ranks"]


def test_the_ring_is_bounded_and_compared_only_where_every_rank_still_holds_it(tmp_path):
    recorder = FlightRecorder(rank=0, capacity=4, faults=FaultPlan())
    recorder.begin_step(1)
    for i in range(6):
        recorder.done(recorder.issue("all_reduce", "col", (0, 1), 8 * i, blocking=True))
    record = recorder.record(world=2, reason="test")
    assert [e.step_index for e in record.entries] == [2, 3, 4, 5] and record.issued == 6
    assert [e.seq for e in record.entries] == [2, 3, 4, 5]
    # rank 1's longer ring holds indices 0-1 that rank 0's lost: they are not a difference
    write(tmp_path, 0, [entry(0, 1, i, "all_reduce", "col", 8 * i) for i in range(2, 6)])
    write(tmp_path, 1, [entry(1, 1, i, "all_reduce", "col", 8 * i) for i in range(0, 6)])
    assert diagnose(tmp_path, env={})[1] == "no rank was waiting in a collective when the records were written"


def test_a_watchdog_sees_a_collective_waiting_too_long():
    recorder = FlightRecorder(rank=0, faults=FaultPlan())
    recorder.begin_step(3)
    recorder.done(recorder.issue("all_gather", "depth", (0, 2), 64, blocking=False))
    entry_ = recorder.issue("all_reduce", "col", (0, 1), 8, blocking=True)
    assert recorder.stuck(0.05) is None
    time.sleep(0.1)
    assert recorder.stuck(0.05).startswith("all_reduce on axis col (ranks 0,1, 8 B, collective #1 of step 3) has waited")
    recorder.done(entry_)
    recorder.end_step()
    assert recorder.stuck(0.05) is None


def test_bad_fault_specs_are_one_sentence():
    assert FaultPlan.parse("skip:rank=1:step=4").kind == "skip"
    for bad in ("hang:rank=1:step=4", "stall:rank=1", "stall:rank=x:step=2", "die:rank=0:step=0"):
        with pytest.raises(ValueError, match=f"AXON_FAULT must look like .* got '{bad}'"):
            FaultPlan.parse(bad)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("kind", ["stall", "skip"])
def test_an_injected_fault_ends_the_job_and_diagnose_names_the_rank(tmp_path, kind):
    run = tmp_path / "run"
    started = time.time()
    codes, outputs, ended = wait_all(start(write_config(run), "env", f"{kind}:rank=1:step=4"))
    fault_at = float(re.search(r"rank 1 (?:stalls|skips) .* at t=(\S+)", "".join(outputs)).group(1))
    stop = max(ended) - fault_at
    assert all(code != 0 for code in codes), codes
    report = subprocess.run([sys.executable, "-m", "axon", "diagnose", str(run)], cwd=REPO, text=True,
                            capture_output=True, check=True).stdout
    print(f"{kind}: job ended {stop:.1f} s after the fault ({max(ended) - started:.1f} s after the start)\n{report}")
    assert stop < COLLECTIVE_TIMEOUT + 30
    assert "-> rank 1 (data 0, pipe 0, depth 0, row 0, col 1" in report
    if kind == "stall":
        assert "collective #0 of step 4" in report and "rank 1 never arrived" in report
    else:
        assert re.search(r"ranks? [0-9,]+ issued all_reduce on axis col \(256 B", report), report
