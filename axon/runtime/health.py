"""A lost rank or a stuck collective ends the job in seconds, and each rank says why.

One thread per rank (`HealthMonitor`), beating once per `interval`:

* Heartbeat: it writes this rank's wall-clock time to the job's c10d store (the TCPStore the
  process group met through) and reads its ring neighbour's (rank + 1); a rank that finished
  writes "finished" there instead, so it is not counted lost when it exits. A stamp older than
  train.peer_timeout_s means a lost rank; a store that stops answering means rank 0, which
  hosts it, is gone. The rank that notices scans every stamp once, posts the verdict under one
  key that every rank reads each beat, and every survivor prints one sentence (lost ranks,
  their grid coordinates and host, the step, the newest loadable checkpoint) and exits.
* Watchdog: it asks the flight recorder (axon.parallel.flight) whether a collective has waited
  longer than train.collective_timeout_s; if so every rank writes OUT_DIR/flight/rank_R.json
  (`python -m axon diagnose OUT_DIR` reads them) and the job ends.
* Signals: SIGTERM and SIGINT wake it through signal.set_wakeup_fd even while the main thread
  is blocked inside a collective (where no Python handler runs); it writes the flight record
  and, as torchrun sends SIGTERM when a rank died, checks its ring neighbour over three beats:
  the rank whose neighbour is silent names the silent run of ranks in the verdict, which the
  others read (O(1) store operations per rank, whatever the world size).

Safe with NCCL: the thread never issues, waits for or aborts a collective. It talks to the
store over its own TCP connection, reads host memory and queries CUDA events (which enqueue
nothing), and ends the process with os._exit, which a rank blocked inside a collective (in
C++, GIL released) cannot delay.

Store load: per beat each rank makes two store operations, whatever the world size: it sets its
stamp and reads the verdict and its neighbour's stamp in one multi_get (three operations on a
torch without multi_get); both keys exist from the start, so neither read waits. The beat is
once a second (peer_timeout_s / 10 if that is shorter) up to 10,000 ranks and slows beyond, so
the whole job stays within STORE_OPS_PER_S on rank 0's store: 3.3 s at 32,768 ranks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from axon.parallel.flight_record import NCCL_TRACE_PREFIX, WAITING, attempt_tag, flight_folder, write_record

from axon.runtime.exit_codes import HUNG as EXIT_HUNG, PEER_LOST as EXIT_PEER_LOST
from axon.runtime.exit_codes import SIGTERM_OUTSIDE_STEPS as EXIT_SIGTERM  # as a shell reports a SIGTERM death
# What a collective raises when its transport failed (gloo and torch.distributed raise plain
# RuntimeErrors in some paths; checkpoint barriers are not in the flight recorder).
TRANSPORT_ERRORS = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "timed out")


VERDICT_KINDS = ("lost", "hung", "failed")
FINISHED = "finished"  # a rank's stamp once it stopped as planned
# The heartbeat's load on the job's one store (hosted by rank 0) for the whole job, whatever the
# world size: a store slower than its operations' timeout (2 s) would read as "rank 0 is lost".
STORE_OPS_PER_S = 20_000
OPS_PER_BEAT = 2  # a set of this rank's stamp, a multi_get of the verdict and the neighbour's


def beat_interval(world: int, peer_timeout_s: float) -> float:
    """Seconds between a rank's beats: once a second (a tenth of peer_timeout_s if shorter), slower
    when the world would load the store beyond STORE_OPS_PER_S. Raises ValueError when
    peer_timeout_s leaves no room to see a lost rank in time (see HealthMonitor.stale_after)."""
    interval = max(min(1.0, peer_timeout_s / 10), world * OPS_PER_BEAT / STORE_OPS_PER_S)
    if peer_timeout_s - 3 * interval <= interval:
        smallest = math.floor(4 * world * OPS_PER_BEAT / STORE_OPS_PER_S) + 1
        raise ValueError(f"train.peer_timeout_s is {peer_timeout_s:g} s, too short for a world of {world} ranks, "
                         f"whose heartbeats are {interval:.2f} s apart to keep the job's store under "
                         f"{STORE_OPS_PER_S} operations a second: it must be at least {smallest} s")
    return interval


def parse_verdict(text, world: int) -> dict | None:
    """The store's verdict as a rank posted it ({"kind", "by", and "ranks" or "reason"}), or None
    when it is not one: anything can write to the store, and a garbled value must neither kill
    the monitor thread (turning off lost-rank and hang detection) nor end the job."""
    try:
        verdict = json.loads(text)
    except (TypeError, ValueError):
        return None

    def rank(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < world

    if not isinstance(verdict, dict) or verdict.get("kind") not in VERDICT_KINDS or not rank(verdict.get("by")):
        return None
    if verdict["kind"] == "lost":
        ranks = verdict.get("ranks")
        return verdict if isinstance(ranks, list) and ranks and all(map(rank, ranks)) else None
    reason = verdict.get("reason")
    return verdict if isinstance(reason, str) and 0 < len(reason) <= 2000 else None


def _first_sentence(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text.split(". ")[0][:200]


def _when(recorder) -> str:
    if recorder is None or recorder.step == 0 and not recorder.in_step:
        return "before the first step"
    return f"{'during' if recorder.in_step else 'after'} step {recorder.step}"


# On SIGTERM, the rank that finds its successor silent names at most this many lost ranks in a
# row (a node's ranks die together); a few reads on one rank, whatever the world size.
NAMED_AT_MOST = 64


class HealthMonitor:
    def __init__(self, rank: int, world: int, address: tuple[str, int], out_dir: str, peer_timeout_s: float,
                 collective_timeout_s: float, hosts_store: bool, backend: str = "gloo", token: str = ""):
        self.rank, self.world, self.address, self.out_dir = rank, world, address, Path(out_dir)
        self.peer_timeout_s, self.collective_timeout_s = peer_timeout_s, collective_timeout_s
        self.hosts_store, self.backend = hosts_store, backend
        self.interval = beat_interval(world, peer_timeout_s)
        # A stamp at most `interval` old at death, seen within `interval`, posted and read within
        # two more: every survivor stops within peer_timeout_s.
        self.stale_after = peer_timeout_s - 3 * self.interval
        # torchrun's agent keeps its store across restarts: a new attempt must not read the last one's
        # verdict. The job's token (shared over the process group) keeps out keys nobody in the job wrote.
        self.prefix = f"axon/health/{token}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.recorder, self.layout = None, None
        self.job, self.attempt = attempt_tag(os.environ, token)  # each attempt's flight records: own files, named
        self.started = time.monotonic()
        self.stopped, self.ending = False, threading.Lock()
        self.store, self.store_host = None, None
        self.ignored_verdict = False  # a malformed verdict is reported once, then ignored
        self.failing_since = None  # when the store stopped answering
        self.finished, self.stamping = False, threading.Lock()  # no beat overwrites "finished"

    # ------------------------------------------------------------ set-up (main thread)
    def start(self) -> "HealthMonitor":
        self.store = self._connect()
        self.store.set(self.prefix + f"host/{self.rank}", socket.gethostname())
        self._beat()
        # The keys every beat reads exist from here on, so one multi_get reads both without waiting:
        # an empty verdict (none yet), an empty stamp (the neighbour has not beaten yet). compare_set
        # writes only where the key is missing.
        for key in ("verdict", f"beat/{(self.rank + 1) % self.world}"):
            self.store.compare_set(self.prefix + key, "", "")
        self._wake_read, wake_write = socket.socketpair()
        wake_write.setblocking(False)
        self._wake_write = wake_write  # kept open for the process's life
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        # SIGTERM outside the training loop (whose StopSignal stops gracefully at a step boundary,
        # and gives this handler back when it is left, also by an exception): the thread decides.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._run, name="axon-health", daemon=True).start()
        return self

    def follow(self, recorder, layout) -> None:
        """The flight recorder to watch and the layout that names coordinates (once the grid exists)."""
        self.recorder, self.layout = recorder, layout

    def stop(self) -> None:
        """Training ended on this rank as planned: peers must not count it lost when it exits."""
        self.stopped = True
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # the thread that acted on it is done
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with self.stamping:
            self.finished = True
            try:
                self.store.set(self.prefix + f"beat/{self.rank}", FINISHED)
            except Exception:  # noqa: BLE001 (the store may already be gone at the very end)
                pass

    def _connect(self, timeout_s: float | None = None):
        import torch.distributed as dist

        host, port = self.address
        return dist.TCPStore(host, port, is_master=False, wait_for_workers=False,
                             timeout=timedelta(seconds=timeout_s or max(2.0, 2 * self.interval)))

    def _beat(self) -> None:
        with self.stamping:  # a beat racing stop() must not overwrite "finished"
            if not self.finished:
                self.store.set(self.prefix + f"beat/{self.rank}", f"{time.time():.3f}")

    def _read(self, key: str) -> str | None:
        """A key that may not exist: two operations (a get of a missing key would wait for it)."""
        key = self.prefix + key
        return self.store.get(key).decode(errors="replace") if self.store.check([key]) else None

    def _read_existing(self, keys: list[str]) -> list[str]:
        """Keys start() made sure exist: one operation (one per key on a torch without multi_get)."""
        keys = [self.prefix + key for key in keys]
        values = self.store.multi_get(keys) if hasattr(self.store, "multi_get") else map(self.store.get, keys)
        return [value.decode(errors="replace") for value in values]

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self.stopped:
            ready, _, _ = select.select([self._wake_read], [], [], self.interval)
            if ready:
                self._on_signals(self._wake_read.recv(64))
            if self.stopped:
                return
            self._beat_once()

    def _beat_once(self) -> None:
        """Two store operations, whatever the world size (the first beats also read rank 0's host)."""
        successor = (self.rank + 1) % self.world
        try:
            self._beat()
            verdict, stamp = self._read_existing(["verdict", f"beat/{successor}"])
            self.failing_since = None
        except Exception:  # noqa: BLE001 (any store failure: connection reset, refused, timeout)
            self.failing_since = self.failing_since or time.monotonic()
            # Each rank judges the store by itself (no verdict to post and read): one beat less.
            if time.monotonic() - self.failing_since > self.stale_after - self.interval:
                self._end_lost([0], store_gone=True)
            try:  # briefly: the connection attempt must not stretch the beat
                self.store = self._connect(self.interval / 2)
            except Exception:  # noqa: BLE001
                pass
            return
        if verdict:  # empty: none posted
            parsed = parse_verdict(verdict, self.world)
            if parsed is not None:
                self._end_by_verdict(parsed)
            elif not self.ignored_verdict:
                self.ignored_verdict = True
                print(f"axon: rank {self.rank}: ignoring a malformed verdict in the job's store ({verdict[:200]!r}); "
                      "lost-rank and hang detection go on", file=sys.stderr, flush=True)
        try:
            if self.store_host is None:  # kept: if rank 0 dies, its store goes with it
                self.store_host = self._read("host/0")
            if successor != self.rank and self._stale_stamp(stamp):
                self._declare_lost()
        except Exception:  # noqa: BLE001 (the next beat tells a dead store from a blip)
            return
        reason = self.recorder.stuck(self.collective_timeout_s) if self.recorder is not None else None
        if reason is not None:
            self._post({"kind": "hung", "by": self.rank, "reason": reason})
            self._end(f"{reason}, longer than train.collective_timeout_s ({self.collective_timeout_s:g} s)",
                      EXIT_HUNG, flight=True)

    def _stale_stamp(self, stamp: str | None) -> bool:
        if stamp == FINISHED:
            return False
        if not stamp:  # never beat: count from our own start
            return time.monotonic() - self.started > self.stale_after
        return time.time() - float(stamp) > self.stale_after

    def _stale(self, rank: int) -> bool:
        return rank != self.rank and self._stale_stamp(self._read(f"beat/{rank}"))

    def _declare_lost(self) -> None:
        lost = [r for r in range(self.world) if self._stale(r)]  # one scan: name every lost rank, not only ours
        self._post({"kind": "lost", "by": self.rank, "ranks": lost})
        self._end_lost(lost)

    def _post(self, verdict: dict) -> None:
        try:
            self.store.set(self.prefix + "verdict", json.dumps(verdict))
        except Exception:  # noqa: BLE001 (the others find out by themselves)
            pass

    def _on_sigterm(self, signum, frame) -> None:
        pass  # the wake-up byte is what counts: the thread sees it even while this thread is blocked

    def _on_signals(self, data: bytes) -> None:
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                self.dump_flight(f"{name} received {_when(self.recorder)}")
                if signum == signal.SIGINT:
                    self._end(f"{name} received", 130, flight=False)
                # torchrun (and some schedulers) send SIGTERM because a rank died: say which, at once.
                # After a plain preemption every rank still beats and the graceful stop goes on.
                # Each rank watches only the next one (a ring covers them all, O(1) store operations
                # per rank); the one that finds it silent names every lost rank in the verdict,
                # which the others read one beat later.
                if self._successor_silent():
                    lost = self._silent_run()
                    self._post({"kind": "lost", "by": self.rank, "ranks": lost})
                    self._end_lost(lost)
                verdict = self._verdict_after_a_beat()
                if verdict is not None and verdict["kind"] == "lost":
                    self._end_lost(verdict["ranks"])
                if signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    self._end(f"{name} received", EXIT_SIGTERM, flight=False)  # no graceful stop outside the loop

    def _successor_silent(self) -> bool:
        """Whether the next unfinished rank's stamp stays still over three beats of ours (every
        rank that got the same signal is checking its own successor, and keeps beating)."""
        successor = (self.rank + 1) % self.world
        try:
            before = self._read(f"beat/{successor}")
            if successor == self.rank or before == FINISHED:
                return False
            for _ in range(3):
                time.sleep(self.interval)
                self._beat()
            after = self._read(f"beat/{successor}")
        except Exception:  # noqa: BLE001 (a store that stopped answering is the beat loop's to judge)
            return False
        return after != FINISHED and (not after or after == before)

    def _silent_run(self) -> list[int]:
        """The silent successor and the unfinished ranks right after it that are silent too (a
        node that died together), up to NAMED_AT_MOST: two more beats of ours, on this rank only."""
        first = (self.rank + 1) % self.world
        after = [(first + k) % self.world for k in range(1, min(NAMED_AT_MOST, self.world - 1))]  # never this rank
        try:
            before = {r: self._read(f"beat/{r}") for r in after}
            for _ in range(2):  # a live rank beats once per interval: two of ours see it move
                time.sleep(self.interval)
                self._beat()
            lost = [first]
            for r in after:
                stamp = self._read(f"beat/{r}")
                if stamp == FINISHED:
                    continue
                if stamp and stamp != before[r]:
                    break  # beating: the run of silent ranks ends here
                lost.append(r)
        except Exception:  # noqa: BLE001
            return [first]
        return lost

    def _verdict_after_a_beat(self) -> dict | None:
        """The job's verdict once the rank watching a silent rank has had time to post it (its
        walk along the silent run takes two beats; one more for the post)."""
        try:
            for _ in range(3):
                time.sleep(self.interval)
                self._beat()
            text = self._read("verdict")
        except Exception:  # noqa: BLE001
            return None
        return parse_verdict(text, self.world) if text else None

    # ------------------------------------------------------------ ending
    def _end_by_verdict(self, verdict: dict) -> None:
        if verdict["kind"] == "lost":
            self._end_lost(verdict["ranks"])
        by = verdict["by"]
        if by == self.rank:
            return
        what = "reports" if verdict["kind"] == "hung" else "failed:"
        self._end(f"rank {by} {what} {verdict['reason']}", EXIT_HUNG, flight=True)

    def _end_lost(self, lost: list[int], store_gone: bool = False) -> None:
        names = " and ".join(self.describe_rank(r, store_gone) for r in lost)
        self._end(f"lost {'rank' if len(lost) == 1 else 'ranks'} {names}", EXIT_PEER_LOST, flight=True,
                  survivors=0 if store_gone else self.world - len(lost))  # no store: nothing to linger for

    def describe_rank(self, rank: int, store_gone: bool = False) -> str:
        where = ""
        if self.layout is not None:
            coords = self.layout.coords(rank)
            where = " (" + ", ".join(f"{axis} {coords[axis]}" for axis in ("data", "pipe", "depth", "row", "col")) + ")"
        host = self.store_host if rank == 0 else None
        if not store_gone:
            try:
                host = self._read(f"host/{rank}")
            except Exception:  # noqa: BLE001
                pass
        text = f"{rank}{where} on host {host or 'unknown'}"
        return text + (f", which hosted the job's store at {self.address[0]}:{self.address[1]}" if store_gone else "")

    def newest_checkpoint(self) -> str:
        from axon.checkpoint import checkpoint_root, find_latest

        latest = find_latest(checkpoint_root(self.out_dir))
        if latest is None:
            return "no checkpoint has been written yet"
        return f"the newest loadable checkpoint is {latest} (continue with --set train.resume=latest)"

    def _end(self, what: str, code: int, flight: bool, survivors: int | None = None) -> None:
        """Say why in one sentence, write the flight record, let the others read the verdict, exit."""
        if not self.ending.acquire(blocking=False):
            return  # the other thread is already ending the process
        if flight:
            self.dump_flight(what)
        where = f"; flight records in {flight_folder(self.out_dir)} (python -m axon diagnose {self.out_dir})" if flight else ""
        print(f"axon: rank {self.rank}: {what} {_when(self.recorder)}; {self.newest_checkpoint()}{where}; "
              f"stopping (exit {code})", file=sys.stderr, flush=True)
        self._linger(self.world if survivors is None else survivors)
        sys.stdout.flush()
        os._exit(code)

    def _linger(self, survivors: int) -> None:
        """The store lives in this process (rank 0 outside torchrun): keep it up until the
        others have read the verdict, or a few beats."""
        if survivors == 0:
            return
        try:
            self.store.add(self.prefix + "ended", 1)
            deadline = time.monotonic() + 3 * self.interval + 2
            while self.hosts_store and time.monotonic() < deadline:
                if self.store.add(self.prefix + "ended", 0) >= survivors:
                    return
                time.sleep(0.05)
        except Exception:  # noqa: BLE001
            pass

    def dump_flight(self, reason: str) -> Path | None:
        """OUT_DIR/flight/rank_R.<tag>.json: this rank's recent collectives, why and by which attempt it was written."""
        if self.recorder is None:
            return None
        folder = flight_folder(self.out_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            record = self.recorder.record(self.world, reason, host=socket.gethostname(),
                                          coords=self.layout.coords(self.rank) if self.layout else None)
            record = dataclasses.replace(record, job=self.job, attempt=self.attempt)
            path = write_record(folder, record)
            if self.backend == "nccl":
                self._dump_nccl(folder)
            return path
        except OSError:
            return None

    def _dump_nccl(self, folder: Path) -> None:
        """PyTorch's own NCCL flight recorder (TORCH_NCCL_TRACE_BUFFER_SIZE > 0), pickled, beside ours."""
        import torch

        c10d = torch._C._distributed_c10d
        dump = getattr(c10d, "_dump_fr_trace", None) or getattr(c10d, "_dump_nccl_trace", None)
        if dump is not None:
            try:
                (folder / f"{NCCL_TRACE_PREFIX}{self.rank}").write_bytes(dump())  # NCCL's own name for it
            except Exception:  # noqa: BLE001 (recorder off or unavailable: ours is written anyway)
                pass

    # ------------------------------------------------------------ the main thread's errors
    def _communication_failed(self, error: BaseException) -> bool:
        import torch.distributed as dist

        if isinstance(error, getattr(dist, "DistError", ())):
            return True
        if self.recorder is not None and any(e.state == WAITING for e in self.recorder.collectives()):
            return True
        return any(mark in str(error) for mark in TRANSPORT_ERRORS)

    def after_error(self, error: BaseException) -> None:
        """Training raised on the main thread. A collective that failed (a peer died: gloo
        resets the connection at once) waits for the heartbeat's verdict, which ends the
        process; otherwise the error is this rank's own: post it so the others stop too."""
        first = _first_sentence(error)
        if self._communication_failed(error):
            deadline = time.monotonic() + self.peer_timeout_s + 3 * self.interval  # the thread decides first
            while time.monotonic() < deadline:
                time.sleep(self.interval)
            self._post({"kind": "failed", "by": self.rank, "reason": f"a collective failed ({first})"})
            self._end(f"a collective failed ({first}) and no peer was lost", EXIT_HUNG, flight=True)
        self._post({"kind": "failed", "by": self.rank, "reason": f"{type(error).__name__}: {first}"})
        self.stopped = True
        self.dump_flight(f"{type(error).__name__}: {first}")
        self._linger(self.world)
