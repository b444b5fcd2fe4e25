"""python -m axon diagnose: hand-written flight records, then the injected faults end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axon.parallel.flight import FaultPlan, FlightRecorder
from axon.parallel.flight_record import CollectiveRecord, FlightRecord, attempt_tag, write_record
from axon.runtime.diagnose import diagnose
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
    lines = diagnose(tmp_path)
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
    lines = diagnose(tmp_path)  # the flight folder itself is accepted too
    assert lines[2:] == ["  ranks 0,1,3 issued all_reduce on axis col (256 B; groups [0,1] [2,3])",
                         "  rank 2 issued all_gather on axis depth (4096 B; group [0,2])",
                         "  -> rank 2 (data 0, pipe 0, depth 1, row 0, col 0, host node1) diverged from 3 peer(s) "
                         "running the same code"]


def test_all_waiting_in_one_collective_is_a_stuck_peer_and_missing_ranks_stopped_reporting(tmp_path):
    for rank in (0, 1, 2):
        write(tmp_path / "flight", rank, history(rank) + [entry(rank, 7, 0, "all_gather", "depth", 4096, "waiting", 9 + rank)])
    (tmp_path / "flight" / "nccl_trace_rank_0").write_bytes(b"x")  # where axon points PyTorch's NCCL dumps
    lines = diagnose(tmp_path)
    flight = tmp_path / "flight"
    assert lines[0] == f"3 of 4 ranks wrote flight records in {flight}; why: hung (3)"
    assert lines[1:] == [
        "ranks 0,1,2 wait in the same collective #0 of step 7, all_gather on axis depth (group of ranks 0,2, "
        "4096 B), for up to 11.0 s: a stuck peer or a network fault",
        "  rank 3 stopped reporting (no flight record)",
        f"PyTorch NCCL flight-recorder dumps: 1 file(s) {flight / 'nccl_trace_rank_'}* (pickle files written by "
        "PyTorch, by the last attempt that dumped; reading one runs code, so read them only if you trust them): "
        f"python -m torch.distributed.flight_recorder.fr_trace {flight} -p nccl_trace_rank_ --allow-incomplete-ranks"]


def test_only_the_newest_attempt_is_read_and_named(tmp_path):
    """A requeued job: attempt 1 (4 ranks) wrote records, then attempt 2 of 2 ranks; neither overwrote the other."""
    folder = tmp_path / "flight"
    folder.mkdir()
    older = attempt_tag({"SLURM_JOB_ID": "123"}, token="first")
    newer = attempt_tag({"SLURM_JOB_ID": "123", "SLURM_RESTART_COUNT": "1"}, token="second")
    assert newer[1].startswith("Slurm restart 1, attempt ") and older[1].startswith("attempt ")
    for rank in range(4):
        write_record(folder, _record(rank, 4, older, time=1000.0, op="all_gather", axis="depth"))
    for rank in range(2):
        write_record(folder, _record(rank, 2, newer, time=1500.0 + 1000 * rank, op="all_reduce", axis="col"))
    # A straggler of the older attempt writes last: it replaces its own file only, and does not win.
    write_record(folder, _record(0, 4, older, time=3000.0, op="all_gather", axis="depth"))
    assert len(list(folder.glob("rank_*.json"))) == 6
    lines = diagnose(tmp_path)
    assert lines[0] == (f"job 123, {newer[1]}: 2 of 2 ranks wrote flight records in {folder}; why: hung (2); "
                        "left out 4 record(s) of 1 older attempt(s)")
    assert lines[1] == ("ranks 0,1 wait in the same collective #0 of step 7, all_reduce on axis col (group of ranks "
                        "0,1, 8 B), for up to 9.0 s: a stuck peer or a network fault")
    assert "all_gather" not in "\n".join(lines) and len(lines) == 2


def test_the_attempt_tag_is_the_same_on_every_rank_and_new_each_start():
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "2"}  # torchrun's default run id
    job, attempt = attempt_tag(torchrun, token="4f1d")
    assert job == "" and re.fullmatch(r"torchrun restart 2, attempt [0-9a-f]{10}", attempt) and "4f1d" not in attempt
    assert attempt_tag(torchrun, token="4f1d") == (job, attempt) != attempt_tag(torchrun, token="77aa")
    assert attempt_tag({"SLURM_JOB_ID": "9", "TORCHELASTIC_RUN_ID": "r1"}) == ("9", "")
    assert attempt_tag({"TORCHELASTIC_RUN_ID": "r1"}) == ("r1", "")


def _record(rank, world, tag, time, op, axis):
    waiting = CollectiveRecord(index=0, step=7, step_index=0, op=op, axis=axis, group=(0, 1), seq=0, bytes=8,
                               state="waiting", age_s=9.0)
    return FlightRecord(rank=rank, world=world, reason="hung", time=time, step=7, in_step=True, entries=(waiting,),
                        job=tag[0], attempt=tag[1])


def test_a_dump_outside_the_run_is_never_mentioned(tmp_path, monkeypatch):
    stray = Path("/tmp/nccl_trace_rank_0")  # world-writable on a login node: anyone may plant a pickle there
    planted = not stray.exists()
    if planted:
        stray.write_bytes(b"not ours")
    try:
        monkeypatch.setenv("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", str(tmp_path / "elsewhere" / "nccl_trace_rank_"))
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "nccl_trace_rank_0").write_bytes(b"x")
        for rank in (0, 1):
            write(tmp_path / "flight", rank, history(rank))
        for report in (diagnose(tmp_path), _cli(tmp_path), _cli(tmp_path / "empty_run", mkdir=True)):
            text = "\n".join(report) if isinstance(report, list) else report
            assert "/tmp/nccl" not in text and "elsewhere" not in text and "NCCL" not in text, text
    finally:
        if planted:
            stray.unlink()


def test_malformed_record_files_are_one_warning_line(tmp_path):
    folder = tmp_path / "flight"
    for rank in (0, 1):
        write(folder, rank, history(rank))
    (folder / "rank_2.json").write_text("{not json")
    (folder / "rank_3.json").write_text(json.dumps({"rank": 3, "world": 4, "entries": [{"op": "all_reduce"}]}))
    (folder / "rank_5.json").write_text(json.dumps({"rank": "five", "world": 4}))
    (folder / "rank_6.json").write_bytes(b"\xff\xfe")
    report = _cli(tmp_path)
    warnings = [line for line in report.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in report, report
    assert warnings[0].startswith("warning: left out 4 unreadable flight record file(s): rank_2.json (")
    assert "rank_3.json (an entry has no 'index')" in warnings[0] and warnings[0].endswith("; ...")
    assert report.startswith(f"2 of 4 ranks wrote flight records in {folder}")


def _cli(out_dir: Path, mkdir: bool = False) -> str:
    if mkdir:
        out_dir.mkdir()
    return subprocess.run([sys.executable, "-m", "axon", "diagnose", str(out_dir)], cwd=REPO, text=True,
                          capture_output=True, check=True).stdout


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
    assert diagnose(tmp_path)[1] == "no rank was waiting in a collective when the records were written"


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
