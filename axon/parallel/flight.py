"""The flight recorder: an always-on ring of this rank's recent step collectives, and the
faults tests inject into them.

Each collective that axon.parallel.trace's `Axis` issues adds one entry: op, axis, the
group's global ranks, bytes, step, its index in the step and in the run, the group's own
sequence number (the same collective has the same number on every member, as NCCL's
seq_id), and its state. Cost: one small object and two clock reads per collective; the ring
keeps the last `capacity` entries.

A point-to-point batch (axon.parallel.p2p) is one entry too, op "p2p" on the pipe axis, in
the same issue order. It is asynchronous: issued, waiting while a wait for one of its
transfers blocks (issued again when that returns and others are still to be waited for),
done when its last wait returns; the rank waits for its batches in issue order, so a batch
that never completes is the rank's newest pending entry. Its `ops` name each transfer: kind,
peer (global rank), how many transfers of that kind with that peer this rank issued before
(rank R's receive #n from P is P's send #n to R), shape, dtype, bytes and label. Cost: one
tuple per transfer and a dict update, all host metadata (no tensor is read).

A watchdog thread (axon.runtime.health) reads the ring to find a collective that waits too long
and writes it to OUT_DIR/flight/rank_R.json (axon.parallel.flight_record, the file's schema);
`python -m axon diagnose` compares the files.
The watchdog only reads host memory (and, on CUDA, queries an event, which enqueues nothing),
so it never issues or waits on a collective of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque

from axon.parallel.flight_record import (DONE, ENQUEUED, ISSUED, P2P, PENDING, WAITING, CollectiveRecord, FlightRecord,
                                         P2POpRecord, describe_ops)


class FlightEntry:
    __slots__ = ("index", "step", "step_index", "op", "axis", "group", "seq", "bytes", "state", "since",
                 "finished", "event", "ops", "allowed_wait_s")

    def record(self, now: float) -> CollectiveRecord:
        ops = tuple(P2POpRecord(*op) for op in self.ops) if self.ops else ()
        return CollectiveRecord(index=self.index, step=self.step, step_index=self.step_index, op=self.op,
                                axis=self.axis, group=tuple(self.group), seq=self.seq, bytes=self.bytes,
                                state=self.state, age_s=round(now - self.since, 3), ops=ops)


class FaultPlan:
    """AXON_FAULT, a testing aid: `stall:rank=R:step=S` makes rank R sleep (until the job ends)
    before its first collective of step S; `skip:rank=R:step=S` makes it leave out its first
    blocking collective of step S; `die:rank=R:step=S` SIGKILLs rank R at its first collective
    of step S, and `die:rank=R:step=S:at=P` at point P of saving the checkpoint after step S
    (SAVE_POINTS: before it starts, after this rank's shard file, after meta.json, after the
    rename, after the prune's first removal). With `:at=p2p` each of the three applies to the
    rank's first point-to-point batch of step S instead of its first collective."""

    KINDS = ("stall", "skip", "die")
    SAVE_POINTS = ("save", "shards", "meta", "renamed", "prune")
    POINTS = ("step", "p2p", *SAVE_POINTS)

    def __init__(self, kind: str = "", rank: int = -1, step: int = -1, at: str = "step"):
        self.kind, self.rank, self.step, self.at = kind, rank, step, at
        self.fired = False

    @classmethod
    def parse(cls, text: str | None) -> "FaultPlan":
        if not text:
            return cls()
        kind, *fields = text.split(":")
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        try:
            plan = cls(kind, int(values["rank"]), int(values["step"]), values.get("at", "step"))
        except (KeyError, ValueError):
            plan = None
        if plan is None or kind not in cls.KINDS or plan.at not in cls.POINTS or plan.step < 1:
            raise ValueError(f"AXON_FAULT must look like stall:rank=R:step=S, skip:rank=R:step=S or "
                             f"die:rank=R:step=S[:at={'|'.join(cls.POINTS[1:])}] with S >= 1, got {text!r}")
        return plan

    def applies(self, rank: int, step: int, at: str = "step") -> bool:
        return (not self.fired and self.kind != "" and rank == self.rank and step == self.step
                and at == self.at)

    def die(self, rank: int, step: int, where: str) -> None:
        print(f"axon: AXON_FAULT: rank {rank} kills itself {where} step {step} at t={time.time():.3f}",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class FlightRecorder:
    def __init__(self, rank: int, capacity: int = 2048, faults: FaultPlan | None = None):
        self.rank = rank
        self.entries: deque[FlightEntry] = deque(maxlen=capacity)
        self.issued = 0  # collectives issued in this run
        self.step, self.step_index, self.in_step = 0, 0, False
        self.last_activity = time.monotonic()  # the last issue or completion: a hang shows as none
        self.group_seq: dict[tuple, int] = {}
        self.p2p_count: dict[tuple[str, int], int] = {}  # (kind, peer): transfers issued in the run
        self.faults = faults if faults is not None else FaultPlan.parse(os.environ.get("AXON_FAULT"))

    def begin_step(self, step: int) -> None:
        """Step `step` (1-based, as printed and in metrics.jsonl) starts."""
        self.step, self.step_index, self.in_step = step, 0, True
        self.last_activity = time.monotonic()

    def end_step(self) -> None:
        self.in_step = False

    def save_point(self, step: int, at: str) -> None:
        """AXON_FAULT=die:rank=R:step=S:at=P kills rank R here (the checkpoint after step S, point P)."""
        if self.faults.applies(self.rank, step, at=at) and self.faults.kind == "die":
            where = "before saving" if at == "save" else f"at save point {at!r} of"
            self.faults.die(self.rank, step, f"{where} the checkpoint after")

    def issue(self, op: str, axis: str, group: tuple, nbytes: int, blocking: bool,
              transfers: tuple | None = None, allowed_wait_s: float | None = None) -> FlightEntry | None:
        """Record a collective about to be issued; None means skip it (fault injection only).

        A point-to-point batch passes op P2P, the pipe axis's group and `transfers`, one
        (kind, peer, shape, dtype, bytes, label) per operation in issue order."""
        at = "step" if transfers is None else "p2p"
        if (self.faults.applies(self.rank, self.step, at=at) and self.in_step
                and (blocking or transfers is not None or self.faults.kind != "skip")):
            self.faults.fired = True
            if self.faults.kind == "die":
                self.faults.die(self.rank, self.step, f"at its first {'collective' if at == 'step' else op} of")
            if self.faults.kind == "stall":
                print(f"axon: AXON_FAULT: rank {self.rank} stalls before {op} on {axis} in step {self.step} "
                      f"at t={time.time():.3f}",
                      file=sys.stderr, flush=True)
                while True:  # until the job ends it
                    time.sleep(3600)
            print(f"axon: AXON_FAULT: rank {self.rank} skips {op} on {axis} in step {self.step} at t={time.time():.3f}",
                  file=sys.stderr, flush=True)
            return None
        entry = FlightEntry()
        now = time.monotonic()
        key = group if transfers is None else (P2P, group)  # batches are no collective of the pipe group
        seq = self.group_seq.get(key, 0)
        self.group_seq[key] = seq + 1
        entry.index, entry.step, entry.step_index, entry.seq = self.issued, self.step, self.step_index, seq
        entry.op, entry.axis, entry.group, entry.bytes = op, axis, group, nbytes
        entry.ops, entry.allowed_wait_s = None, allowed_wait_s
        if transfers is not None:
            ops = []
            for kind, peer, shape, dtype, size, label in transfers:
                n = self.p2p_count.get((kind, peer), 0)
                self.p2p_count[(kind, peer)] = n + 1
                ops.append((kind, peer, n, shape, dtype, size, label))
            entry.ops = ops
        # A blocking collective waits from its issue; an asynchronous one from its wait.
        entry.state, entry.since, entry.finished, entry.event = (WAITING if blocking else ISSUED), now, None, None
        self.issued += 1
        self.step_index += 1
        self.last_activity = now
        self.entries.append(entry)
        return entry

    def waiting(self, entry: FlightEntry) -> None:
        entry.state, entry.since = WAITING, time.monotonic()
        self.last_activity = entry.since

    def waited(self, entry: FlightEntry) -> None:
        """A wait for part of an asynchronous entry returned, the rest is still to be waited for
        (a point-to-point batch's receive before its send): issued, not waiting."""
        entry.state = ISSUED
        self.last_activity = time.monotonic()

    def done(self, entry: FlightEntry, event=None) -> None:
        """The host call returned. On CUDA that means enqueued: `event`, recorded on the compute
        stream after it, says when the collective really finished."""
        now = time.monotonic()
        if event is None:
            entry.state, entry.finished = DONE, now
        else:
            entry.event, entry.state = event, ENQUEUED
        self.last_activity = now

    def _settle(self, entries) -> None:
        for e in entries:
            # cudaEventQuery enqueues nothing and takes no NCCL lock; torch guards the event's own device.
            if e.state == ENQUEUED and e.event is not None and e.event.query():
                e.state, e.finished, e.event = DONE, time.monotonic(), None

    def stuck(self, timeout_s: float) -> str | None:
        """Why this rank looks hung (a collective waiting, or a step without any collective
        activity, for more than `timeout_s`), else None. Called from the watchdog thread."""
        entries = list(self.entries)  # a C-level copy under the GIL: safe while the main thread appends
        self._settle(entries)
        now = time.monotonic()
        for e in entries:
            if e.state in PENDING and now - e.since > max(timeout_s, e.allowed_wait_s or 0.0):
                what = describe_ops([P2POpRecord(*op) for op in e.ops]) if e.ops else f"ranks {_ranks(e.group)}"
                return (f"{e.op} on axis {e.axis} ({what}, {e.bytes} B, collective #{e.step_index} "
                        f"of step {e.step}) has waited {now - e.since:.1f} s")
        if self.in_step and now - self.last_activity > timeout_s:
            return f"step {self.step} has issued or finished no collective for {now - self.last_activity:.1f} s"
        return None

    def collectives(self) -> list[CollectiveRecord]:
        """The ring as it stands, oldest first (CUDA events that finished settled)."""
        entries = list(self.entries)
        self._settle(entries)
        now = time.monotonic()
        return [e.record(now) for e in entries]

    def record(self, world: int, reason: str, host: str = "", coords: dict[str, int] | None = None) -> FlightRecord:
        """This rank's flight record: why it is written, where the rank is, and the ring."""
        collectives = self.collectives()
        return FlightRecord(rank=self.rank, world=world, host=host, reason=reason, time=time.time(), coords=coords,
                            step=self.step, in_step=self.in_step, issued=self.issued,
                            idle_s=round(time.monotonic() - self.last_activity, 3), entries=tuple(collectives))


def _ranks(group) -> str:
    return ",".join(map(str, group))
