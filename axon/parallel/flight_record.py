"""The flight record: what each rank writes to OUT_DIR/flight/rank_R.json about its recent
collectives when a job hangs, fails or is stopped, and reads back to diagnose it.

The one place its file names and fields are spelled: axon.parallel.flight fills the
collectives, axon.runtime.health writes the file, axon.runtime.diagnose reads every rank's.
Plain Python, no torch (`python -m axon diagnose` runs anywhere the files were copied to).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

FOLDER = "flight"  # under the run's out_dir
RECORD_GLOB = "rank_*.json"
NCCL_TRACE_PREFIX = "nccl_trace_rank_"  # PyTorch's NCCL flight-recorder dumps beside ours: <prefix><rank>

# A collective's state: an asynchronous one is issued, then waited for; on CUDA a returned
# host call is only enqueued until its event says the GPU finished it.
ISSUED, WAITING, ENQUEUED, DONE = "issued", "waiting", "enqueued", "done"
PENDING = (WAITING, ENQUEUED)  # what a hang waits in


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

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "entries": [_collective_to_json(e) for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "FlightRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"entries"}
        entries = tuple(CollectiveRecord(**{**e, "group": tuple(e["group"])}) for e in data.get("entries", ()))
        return cls(**{k: v for k, v in data.items() if k in known}, entries=entries)


def _collective_to_json(entry: CollectiveRecord) -> dict:
    return {**dataclasses.asdict(entry), "group": list(entry.group)}


def flight_folder(out_dir: str | Path) -> Path:
    return Path(out_dir) / FOLDER


def record_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank_{rank}.json"


def write_record(folder: Path, record: FlightRecord) -> Path:
    """Write `record` to folder/rank_R.json whole (a reader never sees half a file)."""
    path = record_path(folder, record.rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def read_records(folder: Path) -> dict[int, FlightRecord]:
    """Every rank's record in `folder`, by rank."""
    records = {}
    for path in sorted(Path(folder).glob(RECORD_GLOB)):
        record = FlightRecord.from_json(json.loads(path.read_text()))
        records[record.rank] = record
    return records
