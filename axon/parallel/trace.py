"""A record of every collective: op, axis, bytes, when it was issued, when waiting began,
when it completed. Summaries go into metrics.jsonl; a Chrome trace opens in Perfetto.

A synchronous collective is exposed for its whole duration; an asynchronous one only for
the time its wait blocks. Clocks:
* CPU (gloo): host wall-clock. An asynchronous collective's completion is the first moment
  the host sees it done: its handle is polled whenever any collective is recorded, and at
  its wait. gloo's reduce-scatter handles report completion only when waited for, so on CPU
  their comm time (and with it overlap_fraction) is overstated; exposed_comm_s is exact.
* CUDA (NCCL): events recorded on the compute stream at issue, at the wait, and after the
  wait (when the stream may go on), read back at the end of the step. A collective that
  finished before the stream reached its wait is exposed for ~0.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from axon.parallel.flight import FlightRecorder


@dataclass
class CommEvent:
    op: str
    axis: str
    bytes: int
    issued: float
    wait_start: float
    completed: float
    args: dict = field(default_factory=dict)  # point-to-point: peer, batch, seq, label


class CommTrace:
    def __init__(self):
        self.enabled = False
        self.events: list[CommEvent] = []
        self.origin = time.perf_counter()
        self.origin_event = None  # set by use_cuda_events: stamps are then CUDA events
        self.in_flight: list[TracedWork] = []
        self.unwaited = 0  # asynchronous collectives issued and not yet waited for
        self.p2p_issued = 0  # point-to-point operations issued this step: the next one's `seq`
        # Always on, unlike `enabled`: what a hang is diagnosed from (axon.parallel.flight).
        self.flight = FlightRecorder(dist.get_rank() if dist.is_initialized() else 0)

    def use_cuda_events(self) -> None:
        """Time collectives on the current CUDA stream instead of the host clock."""
        self.origin = time.perf_counter()
        self.origin_event = torch.cuda.Event(enable_timing=True)
        self.origin_event.record()

    def stamp(self):
        """Now: a host time in seconds, or a CUDA event recorded on the current stream."""
        if self.origin_event is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, event: CommEvent) -> None:
        if self.enabled:
            self.events.append(event)
        self.poll()

    def poll(self) -> None:
        """Stamp the asynchronous collectives that have finished since the last look (host clock
        only: on CUDA the stream's own events say when the wait could go on)."""
        if self.origin_event is not None:
            self.in_flight = []
            return
        now = time.perf_counter()
        for work in self.in_flight:
            if work.seen_complete is None and work.work.is_completed():
                work.seen_complete = now
        self.in_flight = [w for w in self.in_flight if w.seen_complete is None and not w.done]

    def take(self) -> list[CommEvent]:
        """The events recorded since the last take, in host seconds (CUDA stamps are resolved
        here, after waiting for the last of them). Point-to-point `seq` starts again at 0."""
        events, self.events = self.events, []
        self.p2p_issued = 0
        if self.origin_event is not None and events:
            events[-1].completed.synchronize()
            seconds = lambda e: self.origin + self.origin_event.elapsed_time(e) / 1e3  # noqa: E731
            events = [CommEvent(e.op, e.axis, e.bytes, seconds(e.issued), seconds(e.wait_start), seconds(e.completed),
                                e.args) for e in events]
        return events


def summarize(events: list[CommEvent]) -> dict:
    comm = sum(e.completed - e.issued for e in events)
    exposed = sum(e.completed - e.wait_start for e in events)
    return {"comm_s": comm, "exposed_comm_s": exposed,
            "overlap_fraction": 1.0 - exposed / comm if comm > 0 else 0.0}


def write_chrome_trace(path, events: list[CommEvent], origin: float, rank: int) -> None:
    """Chrome trace-event JSON: each collective as an issue-to-completion span on its axis's
    track, with the exposed wait as a second span on the 'waiting' track. Point-to-point
    events carry peer, batch and seq (axon.spec.deadlock_check replays them)."""
    records = []
    for e in events:
        args = {"bytes": e.bytes, "axis": e.axis, **e.args}
        records.append({"name": f"{e.op} [{e.axis}]", "ph": "X", "pid": rank, "tid": e.axis, "args": args,
                        "ts": (e.issued - origin) * 1e6, "dur": (e.completed - e.issued) * 1e6})
        records.append({"name": f"wait {e.op} [{e.axis}]", "ph": "X", "pid": rank, "tid": "waiting",
                        "ts": (e.wait_start - origin) * 1e6, "dur": (e.completed - e.wait_start) * 1e6})
    with open(path, "w") as f:
        json.dump({"traceEvents": records, "displayTimeUnit": "ms"}, f)


class TracedWork:
    """An async collective's handle that records its wait; waiting twice is an error.

    It also holds the collective's input and output tensors until the wait: on GPU they are
    used on the communication stream, and must not return to the allocator before it is done."""

    def __init__(self, work, axis: "Axis", op: str, nbytes: int, keep_alive: tuple = (), entry=None):
        self.work, self.axis, self.op, self.nbytes = work, axis, op, nbytes
        self.keep_alive = keep_alive
        self.entry = entry  # the flight recorder's
        self.issued = axis.trace.stamp()
        self.done = False
        self.seen_complete = None
        axis.trace.poll()
        axis.trace.in_flight.append(self)
        axis.trace.unwaited += 1

    def wait(self) -> None:
        if self.done:
            raise RuntimeError(f"{self.op} on {self.axis.name} was already waited for")
        trace = self.axis.trace
        wait_start = trace.stamp()
        if self.entry is not None:
            trace.flight.waiting(self.entry)
        self.work.wait()  # on CUDA: the current stream waits for the communication stream
        self.done, self.keep_alive = True, ()
        trace.unwaited -= 1
        if self.seen_complete is not None:  # it had finished before we waited: nothing was exposed
            wait_start = completed = self.seen_complete
        else:
            completed = trace.stamp()
        if self.entry is not None:
            trace.flight.done(self.entry, None if isinstance(completed, float) else completed)
        trace.add(CommEvent(self.op, self.axis.name, self.nbytes, self.issued, wait_start, completed))


class Axis:
    """One grid axis as the layers see it: its name, its group (None when of size 1) and
    the trace its collectives are recorded in."""

    def __init__(self, name: str, group, size: int, trace: CommTrace, allowed_wait_s: float | None = None):
        self.name, self.group, self.size, self.trace = name, group, size, trace
        self.allowed_wait_s = allowed_wait_s  # the watchdog's patience, if not train.collective_timeout_s
        self._ranks = None

    @property
    def ranks(self) -> tuple[int, ...]:
        """The global ranks of this rank's group along the axis (what the flight recorder names)."""
        if self._ranks is None:
            self._ranks = tuple(dist.get_process_group_ranks(self.group)) if self.group is not None else ()
        return self._ranks

    @contextmanager
    def record(self, op: str, nbytes: int):
        """Around a blocking collective; yields False when fault injection (AXON_FAULT=skip)
        says to leave it out."""
        entry = self.trace.flight.issue(op, self.name, self.ranks, nbytes, blocking=True,
                                        allowed_wait_s=self.allowed_wait_s)
        start = self.trace.stamp()
        yield entry is not None
        end = self.trace.stamp()
        if entry is not None:
            self.trace.flight.done(entry, None if isinstance(end, float) else end)
        self.trace.add(CommEvent(op, self.name, nbytes, start, start, end))

    def issuing(self, op: str, nbytes: int):
        """Before an asynchronous collective is issued: its flight-recorder entry."""
        return self.trace.flight.issue(op, self.name, self.ranks, nbytes, blocking=False)

    def started(self, op: str, nbytes: int, work, keep_alive: tuple = (), entry=None) -> TracedWork:
        return TracedWork(work, self, op, nbytes, keep_alive, entry)
