"""A lost rank stops every survivor within train.peer_timeout_s, named; a stuck or skipped
collective ends the job within train.collective_timeout_s + 30 s, and diagnose names it.

Four ranks of a tiny model at depth 2 x col 2, started from the environment (as srun starts
them) and by torchrun; one rank is SIGKILLed from outside during a step, or kills itself just
before a checkpoint save (AXON_FAULT=die:...:at=save).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from axon.checkpoint import CheckpointReader, find_latest
from axon.parallel.flight_record import load_records
from axon.testing.processes import start_ranks as start, wait_all
from axon.testing.runs import fault_run_config

# Every case waits out most of it (stale_after is peer_timeout_s - 3 beats): 4 s rather than 6 saves
# about 1.5 s a case. Survivors stopped 2.8-3.2 s after the kill of rank 2 and 3.4-4.0 s after rank
# 0's (its store's silence) at 4 s alone on 2 cores; at 6 s it was 4.9-6.3 s for rank 0.
PEER_TIMEOUT = 4
COLLECTIVE_TIMEOUT = 8


def write_config(folder: Path) -> Path:
    return fault_run_config(folder, PEER_TIMEOUT, COLLECTIVE_TIMEOUT)


def worker_pid(torchrun: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank."""
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()
    for pid in map(int, children):
        if f"RANK={rank}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
            return pid
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def steps_logged(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def lost_sentence(lost: int) -> re.Pattern:
    coords = f"data 0, pipe 0, depth {lost // 2}, row 0, col {lost % 2}"
    store = r", which hosted the job's store at \S+" if lost == 0 else ""
    return re.compile(rf"axon: rank (\d): lost rank {lost} \({coords}\) on host {socket.gethostname()}{store} "
                      r"(during|after) step (\d+); the newest loadable checkpoint is (\S+) ")


def check_survivors(outputs: list[str], lost: int) -> tuple[set[int], Path]:
    said = {}
    survivors = [r for r in range(4) if r != lost]
    for out in outputs:
        for match in lost_sentence(lost).finditer(out):
            said[int(match.group(1))] = (int(match.group(3)), Path(match.group(4)))
    assert sorted(said) == survivors, outputs
    assert len({ckpt for _, ckpt in said.values()}) == 1, said
    return {step for step, _ in said.values()}, next(iter(said.values()))[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher,when,lost", [("env", "step", 2), ("torchrun", "save", 2), ("env", "save", 2),
                                                ("torchrun", "step", 2), ("env", "step", 0)])
def test_a_killed_rank_stops_every_survivor_naming_it(tmp_path, launcher, when, lost):
    """Rank 0 hosts the store outside torchrun: the others name it from the store's silence."""
    run = tmp_path / "run"
    config = write_config(run)
    fault = f"die:rank={lost}:step=6:at=save" if when == "save" else ""
    procs = start(config, launcher, fault)
    if when == "step":
        deadline = time.time() + 120
        while steps_logged(run) < 5:
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
            time.sleep(0.02)
        pid = procs[lost].pid if launcher == "env" else worker_pid(procs[0], lost)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
    codes, outputs, ended = wait_all(procs)
    if when == "save":
        killed_at = float(re.search(rf"rank {lost} kills itself before saving the checkpoint after step 6 at t=(\S+)",
                                    "".join(outputs)).group(1))
    survivors = [r for r in range(4) if r != lost]
    steps, named = check_survivors(outputs, lost)
    # Every survivor wrote a flight record naming this start of the job, in its own file.
    records, unreadable = load_records(run / "flight")
    assert not unreadable and set(survivors) <= {r.rank for r in records}, (unreadable, records)
    restart = "torchrun restart 0, " if launcher == "torchrun" else ""
    assert len({(r.job, r.attempt) for r in records}) == 1
    assert re.fullmatch(restart + "attempt [0-9a-f]{10}", records[0].attempt), records[0].attempt
    latest = find_latest(run / "checkpoints")
    assert named == latest
    if launcher == "env":
        assert codes[lost] == -signal.SIGKILL
        assert all(codes[r] == 3 for r in survivors), (codes, outputs)
        stop = max(ended[r] for r in survivors) - killed_at
    else:
        assert codes[0] != 0
        stop = ended[0] - killed_at
    print(f"{launcher}, rank {lost} killed {when}: survivors stopped {stop:.2f} s after the kill (steps {steps})")
    # The promise is detection within peer_timeout_s; the process's exit and this harness's polling
    # take up to a second more on a loaded 2-core machine (rank 0 killed at peer_timeout_s 6: 4.9-5.6 s
    # alone, 6.3 s once under the full suite; at 4: 3.4-4.0 s alone).
    assert stop < PEER_TIMEOUT + 1, stop
    if when == "save":  # the step-6 checkpoint never completed: step 3's is the newest loadable
        assert CheckpointReader(latest).step == 3 and (run / "checkpoints" / "step_00000006.partial").is_dir()
    if (launcher, when) == ("env", "save"):  # resume from it: the logged losses of steps 4-6 again, bitwise
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for row in rows:  # train.straggler_every=2: the slowest rank's numbers on even steps, at least rank 0's own
            assert ("slowest_rank" in row) == (row["step"] % 2 == 0)
            if "slowest_rank" in row:
                assert 0 <= row["slowest_rank"] < 4 and 0 <= row["slowest_step_rank"] < 4
                assert row["slowest_step_time_s"] >= round(row["step_time_s"], 6) - 1e-6
                assert row["slowest_rank_busy_s"] >= round(row["step_time_s"] - row["exposed_comm_s"], 6) - 1e-6
        before = losses(run)
        codes, outputs, _ = wait_all(start(config, "env", "", "--set", "train.resume=latest", "--set", "train.steps=6"))
        assert codes == [0, 0, 0, 0], outputs
        after = losses(run)
        assert [after[s] for s in (4, 5, 6)] == [before[s] for s in (4, 5, 6)]
