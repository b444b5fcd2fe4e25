"""The run directory (`out_dir`) belongs to one run and one live job at a time.

* A lock, OUT_DIR/.lock (job, attempt, host, pid, start time), taken by rank 0 before any
  collective and refreshed while the job runs. A second live job is stopped with one sentence
  naming the holder; a dead holder's lock (its process gone, its refreshes stopped, or an
  earlier attempt of this same job) is taken over, and that is said.
* An out_dir that holds an earlier run (metrics or checkpoints) is continued only with
  train.resume, or started over only with --overwrite, which moves the earlier run's files
  aside: nothing is deleted.
* On resume, metrics.jsonl keeps the whole lines up to the resume step (the steps after it are
  run again), rewritten through a temporary file and a rename.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from axon.checkpoint.reader import complete_checkpoints
from axon.runtime.metrics import METRICS_FILE, read_metrics

LOCK_FILE = ".lock"
LOCK_REFRESH_S = 20.0  # the holder touches its lock this often
LOCK_STALE_S = 120.0  # a lock not touched for this long has a dead holder (clocks of nodes may differ a little)
# What an earlier run leaves and --overwrite moves aside; the GEMM tuning cache is kept (it is
# about the machine, not the run).
RUN_FILES = ("metrics.jsonl", "checkpoints", "tensorboard", "flight", "layout_auto.json", "comm_trace_rank*.json")
# Copied, not moved: the config a run wrote may be the one this run's other ranks are still reading.
RUN_CONFIG = "config.yaml"


class RunDirError(ValueError):
    """The run directory cannot be used as asked, in one sentence."""


@dataclass(frozen=True)
class LockHolder:
    job: str
    attempt: str  # the launcher's restart counts ("" for a first attempt)
    host: str
    pid: int
    started: str  # UTC, ISO 8601

    def describe(self) -> str:
        attempt = f" ({self.attempt})" if self.attempt else ""
        return f"job {self.job}{attempt} on host {self.host}, pid {self.pid}, started {self.started}"


def this_holder(job: str, attempt: str) -> LockHolder:
    return LockHolder(job, attempt, socket.gethostname(), os.getpid(),
                      time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def read_holder(out_dir: str | Path) -> tuple[LockHolder | None, float]:
    """The lock's holder (None if there is no lock or it does not parse) and its age in seconds."""
    path = Path(out_dir) / LOCK_FILE
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
        return LockHolder(str(data["job"]), str(data["attempt"]), str(data["host"]), int(data["pid"]),
                          str(data["started"])), age
    except FileNotFoundError:
        return None, 0.0
    except (OSError, ValueError, KeyError, TypeError):  # a torn or foreign file: no live holder named in it
        return None, LOCK_STALE_S


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def why_dead(holder: LockHolder, age_s: float, job: str, attempt: str) -> str | None:
    """Why the holder no longer runs, or None while it may still be running."""
    if holder.job == job and holder.attempt != attempt:
        return f"it was an earlier attempt ({holder.attempt or 'the first'}) of this same job"
    if holder.host == socket.gethostname() and not _process_alive(holder.pid):
        return f"its process {holder.pid} on {holder.host} has ended"
    if age_s > LOCK_STALE_S:
        return f"it was last refreshed {age_s:.0f} s ago (a live holder refreshes it every {LOCK_REFRESH_S:.0f} s)"
    return None


def check_lock(out_dir: str | Path, job: str, attempt: str) -> str | None:
    """Every rank, before any collective: raise RunDirError if another live job holds the lock;
    return why a dead holder's lock will be taken over (None if there is none to take over)."""
    holder, age = read_holder(out_dir)
    if holder is None or (holder.job, holder.attempt) == (job, attempt):  # none, or this job's rank 0 took it
        return None
    dead = why_dead(holder, age, job, attempt)
    if dead is None:
        raise RunDirError(f"out_dir {str(out_dir)!r} is in use by {holder.describe()}, whose lock "
                          f"{Path(out_dir) / LOCK_FILE} was refreshed {age:.0f} s ago; give this run another "
                          f"out_dir, or wait for that job to end (its lock counts as stale after {LOCK_STALE_S:.0f} s)")
    return f"took over the lock of {holder.describe()}: {dead}"


class RunDirLock:
    """Rank 0's hold on OUT_DIR/.lock: created exclusively, touched every LOCK_REFRESH_S by a
    daemon thread, removed on release if it is still ours."""

    def __init__(self, out_dir: str | Path, job: str, attempt: str):
        self.path = Path(out_dir) / LOCK_FILE
        self.holder = this_holder(job, attempt)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Create the lock, replacing a dead holder's (check_lock said which); RunDirError when a
        live job got there first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self.holder)) + "\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder, age = read_holder(self.path.parent)
                if holder is not None and why_dead(holder, age, self.holder.job, self.holder.attempt) is None:
                    raise RunDirError(f"out_dir {str(self.path.parent)!r} is in use by {holder.describe()}; give "
                                      "this run another out_dir, or wait for that job to end") from None
                self.path.unlink(missing_ok=True)  # a dead holder's: replace it
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            self._thread = threading.Thread(target=self._refresh, name="axon-run-dir-lock", daemon=True)
            self._thread.start()
            return
        raise RunDirError(f"could not take the lock {self.path}: another job keeps creating it")

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                os.utime(self.path)
            except OSError:  # removed by hand: nothing left to refresh
                return

    def release(self) -> None:
        self._stop.set()
        holder, _ = read_holder(self.path.parent)
        if holder == self.holder:
            self.path.unlink(missing_ok=True)


def earlier_run(out_dir: str | Path) -> list[str]:
    """What of an earlier run this out_dir holds (empty for a new or unused directory)."""
    out = Path(out_dir)
    found = []
    metrics = out / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(f"{METRICS_FILE} ({len(read_metrics(metrics))} steps)")
    done = complete_checkpoints(out / "checkpoints")
    if done:
        found.append(f"checkpoint{'s' if len(done) > 1 else ''} {', '.join(p.name for p in done)}")
    return found


def check_start(out_dir: str | Path, resume: str, overwrite: bool) -> None:
    """Every rank, before any collective: a fresh start in a directory holding an earlier run
    needs train.resume or --overwrite."""
    if resume or overwrite:
        return
    found = earlier_run(out_dir)
    if found:
        raise RunDirError(f"out_dir {str(out_dir)!r} holds an earlier run ({'; '.join(found)}): continue it with "
                          "--set train.resume=latest, or start over with --overwrite (the earlier run's files are "
                          "moved aside, not deleted), or give another out_dir")


def move_earlier_run(out_dir: str | Path) -> Path | None:
    """--overwrite, rank 0: move the earlier run's files into OUT_DIR/earlier-<time>/."""
    out = Path(out_dir)
    present = [path for pattern in RUN_FILES for path in sorted(out.glob(pattern))]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = out / f"earlier-{stamp}", 1
    while folder.exists():
        n += 1
        folder = out / f"earlier-{stamp}-{n}"
    folder.mkdir()
    for path in present:
        path.rename(folder / path.name)
    if (out / RUN_CONFIG).is_file():
        shutil.copy2(out / RUN_CONFIG, folder / RUN_CONFIG)
    return folder


def keep_metrics_through(out_dir: str | Path, step: int) -> int:
    """Rewrite metrics.jsonl with its whole lines of steps <= `step` (the run continues after it);
    returns how many steps were dropped."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    rows = read_metrics(path)
    kept = [row for row in rows if row["step"] <= step]
    tmp = path.with_name(METRICS_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows) - len(kept)
