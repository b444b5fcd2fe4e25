"""The flight record: what each rank writes to OUT_DIR/flight/rank_R.json about its recent
collectives when a job hangs, fails or is stopped, and reads back to diagnose it.

Point-to-point batches are entries too (op P2P, their transfers in `ops`). The one place its
file names and fields are spelled: axon.parallel.flight fills the
collectives, axon.runtime.health writes the file, axon.runtime.diagnose reads every rank's.
Each record names its job and attempt, and each attempt writes its own files
(rank_R.<tag>.json), so a restarted job's records never overwrite or mix with an earlier
attempt's; diagnose reads the newest. Plain Python, no torch (`python -m axon diagnose` runs
anywhere the files were copied to).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from axon.spec.launcher import job_and_restarts

FOLDER = "flight"  # under the run's out_dir
RECORD_GLOB = "rank_*.json"
NCCL_TRACE_PREFIX = "nccl_trace_rank_"  # PyTorch's NCCL flight-recorder dumps beside ours: <prefix><rank>

# A collective's state: an asynchronous one is issued, then waited for; on CUDA a returned
# host call is only enqueued until its event says the GPU finished it.
ISSUED, WAITING, ENQUEUED, DONE = "issued", "waiting", "enqueued", "done"
PENDING = (WAITING, ENQUEUED)  # what a hang waits in
P2P = "p2p"  # the op of a point-to-point batch (axon.parallel.p2p): its entry's `ops` name each transfer


@dataclass(frozen=True)
class P2POpRecord:
    """One transfer of a point-to-point batch. `n` counts this rank's earlier transfers of the same
    kind with the same peer in the run: rank R's receive #n from P is P's send #n to R (NCCL runs
    the transfers between two ranks in order)."""
    kind: str  # "send" or "recv"
    peer: int  # global rank
    n: int
    shape: tuple[int, ...]
    dtype: str  # as torch names it, without "torch."
    bytes: int
    label: str = ""  # what travels ("act 3 v0>v1"), the same on both sides


@dataclass(frozen=True)
class CollectiveRecord:
    index: int  # in the run
    step: int  # 1-based, as printed and in metrics.jsonl
    step_index: int  # in the step: ranks of one pipeline stage issue the same sequence
    op: str
    axis: str
    group: tuple[int, ...]  # the group's global ranks
    seq: int  # the group's own sequence number (the same collective has the same on every member)
    bytes: int
    state: str  # ISSUED, WAITING, ENQUEUED or DONE
    age_s: float  # since it was issued (blocking) or waited for (asynchronous), when written
    ops: tuple[P2POpRecord, ...] = ()  # a point-to-point batch's transfers (op P2P); else empty

    @property
    def what(self) -> tuple[str, str, int]:
        """What ranks running the same code must agree on."""
        return self.op, self.axis, self.bytes


@dataclass(frozen=True)
class FlightRecord:
    rank: int
    world: int
    host: str = ""
    reason: str = ""  # why it was written
    time: float = 0.0  # wall clock, when written
    coords: dict[str, int] | None = None  # the rank's grid coordinates, once the grid exists
    step: int = 0
    in_step: bool = False
    issued: int = 0  # collectives issued in the run (the ring keeps the last few)
    idle_s: float = 0.0  # since the last collective was issued or finished
    entries: tuple[CollectiveRecord, ...] = ()
    job: str = ""  # see attempt_tag; empty in files written before these fields existed
    attempt: str = ""

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "entries": [_collective_to_json(e) for e in self.entries]}

    @classmethod
    def from_json(cls, data) -> "FlightRecord":
        """The record in `data`; ValueError, naming the field, if it is not one (diagnose skips the file)."""
        _check(data, _RECORD_TYPES, "the record", required=("rank", "world"))
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise ValueError("'entries' is not a list")
        for e in entries:
            _check(e, _ENTRY_TYPES, "an entry", required=tuple(_ENTRY_TYPES))
            if not all(isinstance(r, int) for r in e["group"]):
                raise ValueError(f"an entry's group {e['group']!r} is not a list of ranks")
            if not isinstance(e.get("ops", []), list):
                raise ValueError(f"an entry's ops {e['ops']!r} is not a list")
            for op in e.get("ops", []):
                _check(op, _OP_TYPES, "a point-to-point op", required=tuple(_OP_TYPES))
                if not all(isinstance(d, int) for d in op["shape"]):
                    raise ValueError(f"a point-to-point op's shape {op['shape']!r} is not a list of sizes")
        if not 0 <= data["rank"] < data["world"]:
            raise ValueError(f"rank {data['rank']} is not below world {data['world']}")
        if data.get("coords") is not None and not all(isinstance(v, int) for v in data["coords"].values()):
            raise ValueError(f"'coords' {data['coords']!r} are not integers")
        known = {f.name for f in dataclasses.fields(cls)} - {"entries"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   entries=tuple(CollectiveRecord(**{**{k: e[k] for k in _ENTRY_TYPES}, "group": tuple(e["group"])},
                                                  ops=tuple(_op_from_json(op) for op in e.get("ops", [])))
                                 for e in entries))


_NUMBER = (int, float)
_RECORD_TYPES = {"rank": int, "world": int, "host": str, "reason": str, "time": _NUMBER, "coords": (dict, type(None)),
                 "step": int, "in_step": bool, "issued": int, "idle_s": _NUMBER, "job": str, "attempt": str}
_ENTRY_TYPES = {"index": int, "step": int, "step_index": int, "op": str, "axis": str, "group": list, "seq": int,
                "bytes": int, "state": str, "age_s": _NUMBER}  # and "ops" (optional: older files have none)
_OP_TYPES = {"kind": str, "peer": int, "n": int, "shape": list, "dtype": str, "bytes": int}  # and "label"


def _op_from_json(op: dict) -> P2POpRecord:
    if not isinstance(op.get("label", ""), str):
        raise ValueError(f"a point-to-point op's label {op['label']!r} is not text")
    return P2POpRecord(**{**{k: op[k] for k in _OP_TYPES}, "shape": tuple(op["shape"])}, label=op.get("label", ""))


def _check(data, types: dict, what: str, required: tuple) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object")
    for name in required:
        if name not in data:
            raise ValueError(f"{what} has no {name!r}")
    for name, kind in types.items():
        if name in data and not isinstance(data[name], kind):
            raise ValueError(f"{what}'s {name!r} is {data[name]!r}")


def attempt_tag(env: Mapping[str, str] = os.environ, token: str = "") -> tuple[str, str]:
    """(job, attempt), the same on every rank of one start of the job.

    job: as the launcher names it (axon.spec.launcher.job_and_restarts).
    attempt: the restart counts a scheduler exports, for a reader, and an id derived from `token`
    (drawn by rank 0 for each process group, known to every rank): counts are unset outside a
    scheduler and repeat when a run is restarted by hand, and clocks differ between ranks, so only
    the id tells two starts apart. It is a hash: the token itself guards the job's health keys."""
    job, restarts = job_and_restarts(env)
    parts = [restarts] if restarts else []
    if token:
        parts.append("attempt " + hashlib.sha256(f"axon attempt {token}".encode()).hexdigest()[:10])
    return job, ", ".join(parts)


def _collective_to_json(entry: CollectiveRecord) -> dict:
    data = {**dataclasses.asdict(entry), "group": list(entry.group),
            "ops": [{**dataclasses.asdict(op), "shape": list(op.shape)} for op in entry.ops]}
    if not entry.ops:
        del data["ops"]  # a collective's entry reads as before
    return data


def describe_ops(ops) -> str:
    """A point-to-point batch's transfers in a few words: "recv from 0 [2,16,64] bfloat16 (act 3 v0>v1)"."""
    return "; ".join(f"{op.kind} {'to' if op.kind == 'send' else 'from'} {op.peer} {shape(op.shape)} {op.dtype}"
                     + (f" ({op.label})" if op.label else "") for op in ops)


def shape(dims) -> str:
    return "[" + ",".join(map(str, dims)) + "]"


def flight_folder(out_dir: str | Path) -> Path:
    return Path(out_dir) / FOLDER


def record_path(folder: Path, rank: int, job: str = "", attempt: str = "") -> Path:
    """folder/rank_R.json, or rank_R.<tag>.json for a record that names its job and attempt."""
    if not job and not attempt:
        return Path(folder) / f"rank_{rank}.json"
    return Path(folder) / f"rank_{rank}.{hashlib.sha256(f'{job}/{attempt}'.encode()).hexdigest()[:10]}.json"


def write_record(folder: Path, record: FlightRecord) -> Path:
    """Write `record` to its file whole (a reader never sees half a file); the temporary name is
    this thread's own, as the watchdog and the main thread of one rank may both write."""
    path = record_path(folder, record.rank, record.job, record.attempt)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def load_records(folder: Path) -> tuple[list[FlightRecord], list[str]]:
    """Every record in `folder` that reads, and "FILE (why)" for each file that does not."""
    records, problems = [], []
    for path in sorted(Path(folder).glob(RECORD_GLOB)):
        try:
            records.append(FlightRecord.from_json(json.loads(path.read_text())))
        except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
            why = (str(err).splitlines() or [type(err).__name__])[0][:120]
            problems.append(f"{path.name} ({why})")
    return records, problems


def by_attempt(records: list[FlightRecord]) -> list[list[FlightRecord]]:
    """`records` grouped by (job, attempt), the oldest attempt first: ordered by when each first
    wrote, so a late straggler of an earlier attempt does not make it the newest (attempts are
    seconds to hours apart, far more than clocks differ between nodes)."""
    groups: dict[tuple[str, str], list[FlightRecord]] = {}
    for record in sorted(records, key=lambda r: r.time):
        groups.setdefault((record.job, record.attempt), []).append(record)
    return sorted(groups.values(), key=lambda group: group[0].time)


def read_records(folder: Path) -> dict[int, FlightRecord]:
    """The newest attempt's records in `folder`, by rank (a rank's latest if it wrote twice)."""
    attempts = by_attempt(load_records(folder)[0])
    return {record.rank: record for record in attempts[-1]} if attempts else {}
