"""One run and one live job per out_dir (axon.runtime.run_dir): the lock, the earlier-run
check, --overwrite, and metrics.jsonl on resume; then the same through `python -m axon train`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from axon.runtime import run_dir
from axon.runtime.metrics import read_metrics
from axon.runtime.run_dir import RunDirError, RunDirLock, check_lock, check_start, keep_metrics_through, move_earlier_run
from axon.testing.processes import REPO, clean_env


def _metrics(out: Path, steps, torn: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"step": s, "loss": 10.0 - s}) + "\n" for s in steps)
    (out / "metrics.jsonl").write_text(lines + torn)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _foreign_lock(out: Path, job: str, host: str, pid: int, age_s: float = 0.0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / run_dir.LOCK_FILE
    path.write_text(json.dumps({"job": job, "attempt": "", "host": host, "pid": pid, "started": "2026-01-01T00:00:00Z"}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_fresh_start_in_a_used_out_dir_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "out"
    check_start(out, "", False)  # no directory yet
    _metrics(out, [1, 2, 3])
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    (out / "checkpoints" / "step_00000002" / "meta.json").write_text("{}")
    with pytest.raises(RunDirError) as err:
        check_start(out, "", False)
    message = str(err.value)
    assert "metrics.jsonl (3 steps)" in message and "checkpoint step_00000002" in message
    assert "--set train.resume=latest" in message and "--overwrite" in message and "\n" not in message
    check_start(out, "latest", False)
    check_start(out, "", True)


def test_overwrite_moves_the_earlier_run_aside_and_keeps_the_gemm_cache(tmp_path):
    out = tmp_path / "out"
    _metrics(out, [1, 2])
    for name in ("config.yaml", "gemm_tuning.json", "comm_trace_rank0.json", "notes.txt"):
        (out / name).write_text("x")
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    folder = move_earlier_run(out)
    assert folder.parent == out and folder.name.startswith("earlier-")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "comm_trace_rank0.json", "config.yaml",
                                                        "metrics.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == sorted([folder.name, "config.yaml", "gemm_tuning.json", "notes.txt"])
    assert (folder / "checkpoints" / "step_00000002").is_dir()
    assert move_earlier_run(out) is None  # nothing left to move


def test_resume_keeps_whole_metrics_lines_up_to_its_step(tmp_path):
    out = tmp_path / "out"
    _metrics(out, [1, 2, 3, 4, 5, 6], torn='{"step": 7, "lo')
    assert keep_metrics_through(out, 4) == 2  # steps 5 and 6 (the torn line is not a row)
    assert (out / "metrics.jsonl").read_text().splitlines() == [json.dumps({"step": s, "loss": 10.0 - s})
                                                                 for s in (1, 2, 3, 4)]
    assert not (out / "metrics.jsonl.tmp").exists()


def test_readers_skip_a_torn_line_and_keep_the_last_row_of_a_repeated_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 9}\n{"step": 2, "loss": 8}\n{"step": 3, "lo{"step": 3, "loss": 6}\n'
                    '{"step": 2, "loss": 7.5}\n{"step": 3, "loss": 7}\n{"step": 4, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 9}, {"step": 2, "loss": 7.5}, {"step": 3, "loss": 7}]


def test_a_live_holder_stops_a_second_job_and_a_dead_one_is_taken_over(tmp_path):
    out = tmp_path / "out"
    host = socket.gethostname()
    _foreign_lock(out, "111.0", host, os.getpid())  # alive: this very process
    with pytest.raises(RunDirError) as err:
        check_lock(out, "222.0", "")
    assert "in use by job 111.0 on host " + host in str(err.value)
    with pytest.raises(RunDirError):
        RunDirLock(out, "222.0", "").take()
    assert json.loads((out / ".lock").read_text())["job"] == "111.0"  # untouched

    _foreign_lock(out, "111.0", host, _dead_pid())
    assert "has ended" in check_lock(out, "222.0", "")
    _foreign_lock(out, "111.0", "another-node", 1, age_s=run_dir.LOCK_STALE_S + 5)
    assert "last refreshed" in check_lock(out, "222.0", "")
    _foreign_lock(out, "111.0", "another-node", 1)  # fresh, on a host we cannot look at
    with pytest.raises(RunDirError):
        check_lock(out, "222.0", "")
    requeue = "Slurm restart 1"
    assert "an earlier attempt (the first) of this same job" in check_lock(out, "111.0", requeue)

    lock = RunDirLock(out, "111.0", requeue)
    lock.take()
    holder = json.loads((out / ".lock").read_text())
    assert (holder["job"], holder["attempt"], holder["pid"], holder["host"]) == ("111.0", requeue, os.getpid(), host)
    assert check_lock(out, "111.0", requeue) is None  # the job's other ranks read their own rank 0's lock
    lock.release()
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------- through `python -m axon train`


def _config(folder: Path, steps: int) -> Path:
    config = {"model": {"preset": "tiny", "seq_len": 16},
              "train": {"steps": steps, "global_batch": 8, "lr": 1e-3, "seed": 3, "peak_tflops": 1.0,
                        "checkpoint_every": 2, "keep_checkpoints": 2},
              "data": {"source": "synthetic"}, "out_dir": str(folder / "out")}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "axon", "train", str(config), *args], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_train_in_a_used_out_dir_rollback_and_a_second_live_job(tmp_path):
    config = _config(tmp_path, 6)
    out = tmp_path / "out"
    first = _train(config)
    assert first.returncode == 0, first.stderr
    before = _snapshot(out)

    # A new user's second run in the same directory: one sentence, nothing touched.
    again = _train(config, "--set", "train.steps=2")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "holds an earlier run" in again.stderr
    assert _snapshot(out) == before

    # A rollback to step 4 by name: the abandoned step 6 is moved aside, the metrics end at step 4 before
    # the run appends 5, and pruning keeps the checkpoint resumed from and the new one.
    rollback = _train(config, "--set", f"train.resume={out / 'checkpoints' / 'step_00000004'}",
                      "--set", "train.steps=5")
    assert rollback.returncode == 0, rollback.stderr
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4, 5]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert rows[:4] == before["metrics.jsonl"].decode().splitlines()[:4]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000005"]
    abandoned = list((out / "checkpoints").glob("abandoned-*/step_00000006"))
    assert len(abandoned) == 1 and (abandoned[0] / "meta.json").is_file()
    assert not (out / ".lock").exists()

    # A live job holds the directory: a second one is refused, naming it; once the holder is
    # killed, a resume takes its lock over and says so.
    long_run = subprocess.Popen([sys.executable, "-m", "axon", "train", str(config), "--set", "train.steps=100000",
                                 "--set", "train.resume=latest"], cwd=REPO, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = _train(config, "--set", "train.resume=latest")
        assert second.returncode == 2
        assert f"in use by job {socket.gethostname()}-{long_run.pid}" in second.stderr
    finally:
        long_run.send_signal(signal.SIGKILL)
        long_run.wait(timeout=30)
    third = _train(config, "--set", "train.resume=latest", "--set", "train.steps=6")
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of job {socket.gethostname()}-{long_run.pid}" in third.stdout
    assert "has ended" in third.stdout and not (out / ".lock").exists()


# (arguments and variables given, the train.resume the script adds, the arguments it passes on)
SBATCH_CASES = [
    ((), "latest", ()),
    # starting over clears a config's own `resume: latest`, which --overwrite would contradict ...
    (("--overwrite",), "", ("--overwrite",)),
    # ... and its requeued attempt continues what it started instead of moving its checkpoints aside
    (("--overwrite", "SLURM_RESTART_COUNT=1"), "latest", ()),
    (("AXON_COMMAND=dry-run",), None, ()),
]


@pytest.mark.parametrize("extra, resume, passed", SBATCH_CASES)
def test_sbatch_scripts_pass_resume_latest_to_train(tmp_path, extra, resume, passed):
    """The shipped job scripts, run by bash with a stand-in srun that prints its arguments."""
    (tmp_path / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    env = dict(clean_env(), PATH=f"{tmp_path}:{os.environ['PATH']}", CONFIG="run dir/run.yaml", USER="someone",
               SLURM_JOB_ID="4242")  # what Slurm's job environment always has
    args = [a for a in extra if "=" not in a]
    env.update(a.split("=", 1) for a in extra if "=" in a)
    for machine in ("perlmutter", "frontier", "alps"):
        done = subprocess.run(["bash", str(REPO / "launch" / f"{machine}.sbatch"), *args], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        words = done.stdout.splitlines()
        tail = words[words.index("axon") + 1:]
        expected = [env.get("AXON_COMMAND", "train"), "run dir/run.yaml"]
        expected += ["--set", f"train.resume={resume}"] if resume is not None else []
        assert tail == expected + list(passed), machine


def test_sbatch_scripts_requeue_a_preempted_job_and_nothing_else(tmp_path):
    """Stand-in srun and scontrol: exit 75 (preempted, checkpointed) requeues the job; 0, 2 and 5 do not;
    the script ends with axon's code either way."""
    (tmp_path / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    (tmp_path / "scontrol").chmod(0o755)
    env = dict(clean_env(), PATH=f"{tmp_path}:{os.environ['PATH']}", CONFIG="run.yaml", USER="someone",
               SLURM_JOB_ID="4242")
    log = tmp_path / "scontrol.log"
    for code in (0, 2, 5, 75):
        (tmp_path / "srun").write_text(f"#!/bin/bash\nexit {code}\n")
        (tmp_path / "srun").chmod(0o755)
        for machine in ("perlmutter", "frontier", "alps"):
            done = subprocess.run(["bash", str(REPO / "launch" / f"{machine}.sbatch")], env=env,
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == code, (machine, done.stderr)
        requeues = log.read_text().splitlines() if log.exists() else []
        assert requeues == (["requeue 4242"] * 3 if code == 75 else []), code
        log.unlink(missing_ok=True)

