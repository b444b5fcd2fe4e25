"""`python -m axon diagnose OUT_DIR`: name the rank and the collective behind a hang.

Reads the flight records every rank writes to OUT_DIR/flight/rank_R.json when a collective
waits longer than train.collective_timeout_s, a peer is lost, or a stop signal arrives
(axon.runtime.health, axon.parallel.flight; the file's schema: axon.parallel.flight_record),
and prints a few lines:

* the first collective where ranks that run the same code (the ranks of one pipeline stage)
  differ: which ranks issued what (op, axis, group, bytes), and which never arrived; or
* that every rank waits in the same collective: a stuck peer or a network fault, with the
  ranks that stopped reporting (no file);
* for a rank whose newest pending entry is a point-to-point batch (pipeline sends and
  receives): which transfer from or to which peer (stages, step, shape, dtype), and whether
  the peer issued the matching one; if it did not, where the peer is instead (it is the one
  to look at);
* where PyTorch's own NCCL flight-recorder dumps are, if any.

Collectives are matched by (step, index in the step): ranks of one stage issue the same
sequence, so the first index where their records differ is where their code diverged.
Only the run's own OUT_DIR/flight is read, and of it only the newest attempt of the job (its
first line names it): nothing in /tmp or named by the environment, which others may write.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from axon.parallel.flight_record import (FOLDER, NCCL_TRACE_PREFIX, P2P, PENDING, CollectiveRecord, FlightRecord,
                                         P2POpRecord, by_attempt, describe_ops, flight_folder, load_records, shape)


def _what(entry: CollectiveRecord | None) -> tuple | None:
    return None if entry is None else entry.what


def _describe(entry: CollectiveRecord) -> str:
    if entry.op == P2P and entry.ops:
        return f"{entry.op} on axis {entry.axis} ({describe_ops(entry.ops)}, {entry.bytes} B)"
    return f"{entry.op} on axis {entry.axis} (group of ranks {','.join(map(str, entry.group))}, {entry.bytes} B)"


def _ranks(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"


def _last(record: FlightRecord) -> str:
    if not record.entries:
        return "it recorded no collective"
    e = record.entries[-1]
    return f"its last was collective #{e.step_index} of step {e.step}, {_describe(e)}, {e.state}"


def first_difference(records: dict[int, FlightRecord]) -> list[str] | None:
    """Lines naming the first (step, index) where ranks of one pipeline stage differ, or None."""
    stages: dict[int, list[int]] = {}
    for rank, record in records.items():
        stages.setdefault((record.coords or {}).get("pipe", 0), []).append(rank)
    found = []
    for ranks in stages.values():
        if len(ranks) < 2:
            continue
        by_key = {r: {(e.step, e.step_index): e for e in records[r].entries} for r in ranks}
        # Only what every rank's ring still holds can be compared: from the latest first entry on.
        starts = [min(keys) for keys in by_key.values() if keys]
        start = max(starts) if len(starts) == len(ranks) else (0, 0)
        for key in sorted(set().union(*by_key.values())):
            if key < start:
                continue
            seen = {r: by_key[r].get(key) for r in ranks}
            if len({_what(e) for e in seen.values()}) > 1:
                found.append((key, seen))
                break
    if not found:
        return None
    (step, index), seen = min(found, key=lambda item: item[0])
    counts = Counter(_what(e) for e in seen.values() if e is not None)
    majority = counts.most_common(1)[0][0]
    lines = [f"first difference: collective #{index} of step {step}:"]
    issued = {}
    for rank, entry in seen.items():
        if entry is not None:
            issued.setdefault(_what(entry), []).append(rank)
    for what, ranks in sorted(issued.items(), key=lambda item: (item[0] != majority, item[1])):
        sample = seen[ranks[0]]
        groups = sorted({seen[r].group for r in ranks})
        lines.append(f"  {_ranks(ranks)} issued {sample.op} on axis {sample.axis} ({sample.bytes} B; "
                     f"group{'s' if len(groups) > 1 else ''} {' '.join('[' + ','.join(map(str, g)) + ']' for g in groups)})")
    absent = sorted(r for r, e in seen.items() if e is None)
    for rank in absent:
        lines.append(f"  rank {rank} never arrived ({_last(records[rank])})")
    odd = sorted(r for r, e in seen.items() if _what(e) != majority)
    if odd and len(odd) < len(seen) / 2 + (len(seen) == 2):
        coords = records[odd[0]].coords
        where = (" (" + ", ".join(f"{axis} {coords.get(axis, '?')}" for axis in ("data", "pipe", "depth", "row", "col"))
                 + f", host {records[odd[0]].host})") if coords and len(odd) == 1 else ""
        lines.append(f"  -> {_ranks(odd)}{where} diverged from {len(seen) - len(odd)} peer(s) running the same code")
    return lines


def _newest_pending(record: FlightRecord) -> CollectiveRecord | None:
    return next((e for e in reversed(record.entries) if e.state in PENDING), None)


def _stage(records: dict[int, FlightRecord], entry: CollectiveRecord, rank: int) -> str:
    """`rank`'s pipe stage: from its record's coordinates, else its place in the pipe group
    (a stage's global rank grows with the stage: first + stage * stride)."""
    coords = records[rank].coords if rank in records else None
    if coords and "pipe" in coords:
        return str(coords["pipe"])
    return str(sorted(entry.group).index(rank)) if rank in entry.group else "?"


_NOT_ISSUED, _NO_RECORD, _UNKNOWN, _ISSUED = range(4)  # what the peer's record says of the matching transfer


def _transfers(record: FlightRecord) -> dict[tuple[str, int], dict[int, CollectiveRecord]]:
    """A rank's point-to-point transfers in its ring: (kind, peer) -> {n: the batch's entry}."""
    found: dict[tuple[str, int], dict[int, CollectiveRecord]] = {}
    for e in record.entries:
        for op in e.ops:
            found.setdefault((op.kind, op.peer), {})[op.n] = e
    return found


def _match(records: dict[int, FlightRecord], rank: int, op: P2POpRecord, index: dict):
    """(what, the peer's entry holding the transfer matching `rank`'s `op`, or None; the n the peer
    reached): its send #n to `rank` for a receive #n from it, and the other way round. `index`
    caches each peer's _transfers (read once however many ranks wait on it)."""
    peer = records.get(op.peer)
    if peer is None:
        return _NO_RECORD, None, None
    if op.peer not in index:
        index[op.peer] = _transfers(peer)
    seen = index[op.peer].get(("send" if op.kind == "recv" else "recv", rank), {})
    if op.n in seen:
        return _ISSUED, seen[op.n], None
    if seen and max(seen) < op.n or not seen and peer.issued <= len(peer.entries):
        return _NOT_ISSUED, None, max(seen) if seen else None  # its ring reaches back past it, or to the run's start
    return _UNKNOWN, None, None


def _where(record: FlightRecord, step: int) -> str:
    """Where a peer is: the newest entry it waits in, else its last; and if it is in another step."""
    e = _newest_pending(record)
    where = (f"it waits in {_describe(e)}, collective #{e.step_index} of step {e.step}, for {e.age_s:.1f} s"
             if e is not None else _last(record))
    if record.step != step:
        where += f"; it is {'behind' if record.step < step else 'ahead'}, in step {record.step}"
    return where


def p2p_waits(records: dict[int, FlightRecord], limit: int = 8) -> tuple[list[str], set[int]]:
    """Lines for the ranks whose newest pending entry is a point-to-point batch, and those ranks.
    Peers that never issued the matching transfer come first (the ones to look at)."""
    found, index = [], {}
    for rank, record in records.items():
        e = _newest_pending(record)
        if e is None or e.op != P2P or not e.ops:
            continue
        matches = [(_match(records, rank, op, index), op) for op in e.ops]
        # The transfer to name: one whose peer did not issue its match, else the first receive.
        (what, peer_entry, reached), op = min(matches, key=lambda m: (m[0][0], m[1].kind != "recv"))
        found.append((what, rank, e, op, peer_entry, reached))
    waiting = {rank for _, rank, *_ in found}
    # A send whose receive was issued and waits too: the receiver's lines say it.
    named = [f for f in found
             if not (f[0] == _ISSUED and f[3].kind == "send" and f[4].state in PENDING and f[3].peer in waiting)]
    lines = []
    for what, rank, e, op, peer_entry, reached in sorted(named, key=lambda f: (f[0], f[1]))[:limit]:
        here, there = _stage(records, e, rank), _stage(records, e, op.peer)
        detail = f"{shape(op.shape)} {op.dtype}" + (f", {op.label}" if op.label else "")
        if op.kind == "recv":
            head = f"rank {rank} is waiting for a receive from rank {op.peer} (pipe stage {there} -> {here}"
            other = "send"
        else:
            head = f"rank {rank} is waiting for rank {op.peer} to receive its send (pipe stage {here} -> {there}"
            other = "receive"
        lines.append(f"{head}, step {e.step}, {detail}) for {e.age_s:.1f} s, collective #{e.step_index} of the step")
        matching = f"the matching {other} (#{op.n} {'to' if other == 'send' else 'from'} rank {rank})"
        if what == _NO_RECORD:
            lines.append(f"  -> rank {op.peer} wrote no flight record (stopped reporting): look at rank {op.peer}")
        elif what == _NOT_ISSUED:
            upto = f"it issued up to #{reached}" if reached is not None else "it issued none"
            lines.append(f"  -> rank {op.peer} never issued {matching}; {upto}; "
                         f"{_where(records[op.peer], e.step)}: look at rank {op.peer}")
        elif what == _UNKNOWN:
            lines.append(f"  rank {op.peer}'s ring no longer reaches {matching}: {_where(records[op.peer], e.step)}")
        else:
            state = (f"waiting there for {peer_entry.age_s:.1f} s" if peer_entry.state in PENDING
                     else f"{peer_entry.state} there")
            lines.append(f"  rank {op.peer} issued {matching} (collective #{peer_entry.step_index} of step "
                         f"{peer_entry.step}, {state}): a stuck transfer or a network fault")
    if len(named) > limit:
        lines.append(f"  ... and {len(named) - limit} more rank(s) waiting in point-to-point batches")
    return lines, waiting


def all_waiting(records: dict[int, FlightRecord], world: int, explained: set[int] = frozenset()) -> list[str]:
    """Where the ranks wait; those in `explained` (a point-to-point wait, named by p2p_waits) are left out."""
    pending = {}
    for rank, record in records.items():
        if rank in explained:
            continue
        waiting = [e for e in record.entries if e.state in PENDING]
        if waiting:
            e = waiting[0]
            pending.setdefault((e.step, e.step_index, _what(e)), []).append((rank, e))
    missing = sorted(set(range(world)) - set(records))
    lines = []
    if len(pending) == 1:
        (step, index, _), waiters = next(iter(pending.items()))
        e = waiters[0][1]
        lines.append(f"{_ranks(r for r, _ in waiters)} wait in the same collective #{index} of step {step}, "
                     f"{_describe(e)}, for up to {max(w.age_s for _, w in waiters):.1f} s: "
                     "a stuck peer or a network fault")
    elif pending:
        lines.append("ranks wait in different collectives:")
        for (step, index, _), waiters in sorted(pending.items()):
            lines.append(f"  {_ranks(r for r, _ in waiters)}: #{index} of step {step}, {_describe(waiters[0][1])}")
    elif not explained:
        lines.append("no rank was waiting in a collective when the records were written")
    idle = sorted(r for r in records if r not in {r for w in pending.values() for r, _ in w} | set(explained))
    if pending and idle:
        lines.append(f"  {_ranks(idle)} waited in none: " + "; ".join(f"rank {r}: {_last(records[r])}" for r in idle))
    if missing:
        lines.append(f"  {_ranks(missing)} stopped reporting (no flight record)")
    return lines


def nccl_dumps(folder: Path) -> list[str]:
    """PyTorch's NCCL flight-recorder dumps in the run's flight folder (where axon points
    TORCH_NCCL_DEBUG_INFO_TEMP_FILE, and where its watchdog dumps them): pickles, which run code
    when read, so the line says so."""
    found = sorted(folder.glob(NCCL_TRACE_PREFIX + "*"))
    if not found:
        return []
    return [f"PyTorch NCCL flight-recorder dumps: {len(found)} file(s) {folder / NCCL_TRACE_PREFIX}* (pickle files "
            "written by PyTorch, by the last attempt that dumped; reading one runs code, so read them only if you "
            f"trust them): python -m torch.distributed.flight_recorder.fr_trace {folder} -p {NCCL_TRACE_PREFIX} "
            "--allow-incomplete-ranks"]


def diagnose_report(out_dir: Path) -> dict:
    """What the flight records say, from OUT_DIR/flight only (or that folder given itself), as data:
    `findings` are the report's sentences (the first collective where ranks differ, or what all wait in)."""
    folder = flight_folder(out_dir) if flight_folder(out_dir).is_dir() else Path(out_dir)
    found, unreadable = load_records(folder)
    report = {"folder": str(folder), "job": None, "attempt": None, "ranks_reporting": 0, "world": None,
              "reasons": {}, "older_attempts": 0, "older_records_left_out": 0, "findings": [],
              "warnings": [f"left out {len(unreadable)} unreadable flight record file(s): "
                           + "; ".join(unreadable[:3]) + ("; ..." if len(unreadable) > 3 else "")] if unreadable else [],
              "nccl_dumps": nccl_dumps(folder)}
    attempts = by_attempt(found)
    if not attempts:
        none = "no readable flight records" if unreadable else "no flight records (rank_R*.json): the job wrote none"
        report["findings"] = [f"{none} in {folder}"]
        return report
    newest, older = attempts[-1], attempts[:-1]
    records = {record.rank: record for record in newest}  # a rank that wrote twice: its latest (sorted by time)
    difference = first_difference(records)
    transfers, explained = p2p_waits(records)
    report.update(job=newest[0].job or None, attempt=newest[0].attempt or None, ranks_reporting=len(records),
                  world=max(r.world for r in newest),
                  reasons=dict(Counter(r.reason for r in records.values()).most_common()),
                  older_attempts=len(older), older_records_left_out=sum(map(len, older)),
                  findings=difference + transfers if difference else
                  transfers + all_waiting(records, max(r.world for r in newest), explained))
    return report


def diagnose(out_dir: Path) -> list[str]:
    """The report's lines (diagnose_report's, in words)."""
    report = diagnose_report(out_dir)
    warnings = [f"warning: {w}" for w in report["warnings"]]
    if not report["ranks_reporting"]:
        return report["findings"] + warnings + report["nccl_dumps"]
    which = ", ".join(filter(None, [f"job {report['job']}" if report["job"] else "", report["attempt"] or ""]))
    reasons = list(report["reasons"].items())[:3]
    older = report["older_attempts"]
    lines = [(f"{which}: " if which else "") + f"{report['ranks_reporting']} of {report['world']} ranks wrote flight "
             f"records in {report['folder']}; why: " + "; ".join(f"{reason} ({n})" for reason, n in reasons)
             + (f"; left out {report['older_records_left_out']} record(s) of {older} older attempt(s)" if older else "")]
    return lines + report["findings"] + warnings + report["nccl_dumps"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m axon diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help=f"the run's out_dir (or its {FOLDER}/ folder)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: folder, job, attempt, ranks_reporting, world, reasons, "
                             "older_attempts, older_records_left_out, findings, warnings, nccl_dumps")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        from axon.config.errors import error_line

        print(error_line("diagnose", f"{out_dir} is not a directory"), file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(diagnose_report(out_dir), indent=1))
    else:
        print("\n".join(diagnose(out_dir)))
