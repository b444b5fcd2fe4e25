"""python -m axon diagnose on hand-made flight records where a pipeline receive never completes."""

from __future__ import annotations

import json

from axon.runtime.diagnose import diagnose


def p2p(step, index, n, kind, peer, state="done", age=0.1, group=(0, 1), label="act 0 v0>v1"):
    return {"index": 100 * step + index, "step": step, "step_index": index, "op": "p2p", "axis": "pipe",
            "group": list(group), "seq": n, "bytes": 2048, "state": state, "age_s": age,
            "ops": [{"kind": kind, "peer": peer, "n": n, "shape": [2, 16, 32], "dtype": "bfloat16", "bytes": 2048,
                     "label": label}]}


def collective(step, index, op, axis, group, state="done", age=0.1):
    return {"index": 100 * step + index, "step": step, "step_index": index, "op": op, "axis": axis,
            "group": list(group), "seq": index, "bytes": 256, "state": state, "age_s": age}


def write(folder, rank, world, coords, entries, step=7):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank_{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "host": "node0", "reason": "hung", "coords": coords, "step": step,
         "in_step": True, "issued": len(entries), "entries": entries}))


def test_a_receive_whose_send_was_never_issued_names_the_sender(tmp_path):
    """Pipe 2: rank 1 waits for micro-batch 1's activations; rank 0 sent micro-batch 0 only (then stalled)."""
    flight = tmp_path / "flight"
    write(flight, 0, 2, {"pipe": 0}, [p2p(7, 0, 0, "send", 1)])
    write(flight, 1, 2, {"pipe": 1}, [p2p(7, 0, 0, "recv", 0),
                                      p2p(7, 1, 1, "recv", 0, state="waiting", age=9.5, label="act 1 v0>v1")])
    lines = diagnose(tmp_path)
    assert lines[1:] == [
        "rank 1 is waiting for a receive from rank 0 (pipe stage 0 -> 1, step 7, [2,16,32] bfloat16, act 1 v0>v1) "
        "for 9.5 s, collective #1 of the step",
        "  -> rank 0 never issued the matching send (#1 to rank 1); it issued up to #0; its last was collective #0 "
        "of step 7, p2p on axis pipe (send to 1 [2,16,32] bfloat16 (act 0 v0>v1), 2048 B), done: look at rank 0"]


def test_a_receive_from_a_peer_stuck_in_a_collective_names_the_peer_and_its_collective(tmp_path):
    """Pipe 2 x col 2: stage 0 (ranks 0,1) waits in an all-reduce on col before sending; stage 1
    (ranks 2,3) waits to receive."""
    flight = tmp_path / "flight"
    for rank in (0, 1):
        write(flight, rank, 4, {"pipe": 0, "col": rank}, [collective(7, 0, "all_reduce", "col", (0, 1), "waiting", 9.0)])
    for rank in (2, 3):
        write(flight, rank, 4, {"pipe": 1, "col": rank - 2},
              [collective(6, 0, "all_reduce", "col", (2, 3)),
               p2p(7, 1, 0, "recv", rank - 2, state="waiting", age=9.5, group=(rank - 2, rank))])
    lines = diagnose(tmp_path)
    stuck_in = "it waits in all_reduce on axis col (group of ranks 0,1, 256 B), collective #0 of step 7, for 9.0 s"
    assert lines[1:] == [
        "rank 2 is waiting for a receive from rank 0 (pipe stage 0 -> 1, step 7, [2,16,32] bfloat16, act 0 v0>v1) "
        "for 9.5 s, collective #1 of the step",
        f"  -> rank 0 never issued the matching send (#0 to rank 2); it issued none; {stuck_in}: look at rank 0",
        "rank 3 is waiting for a receive from rank 1 (pipe stage 0 -> 1, step 7, [2,16,32] bfloat16, act 0 v0>v1) "
        "for 9.5 s, collective #1 of the step",
        f"  -> rank 1 never issued the matching send (#0 to rank 3); it issued none; {stuck_in}: look at rank 1",
        "ranks 0,1 wait in the same collective #0 of step 7, all_reduce on axis col (group of ranks 0,1, 256 B), "
        "for up to 9.0 s: a stuck peer or a network fault"]
    # rank 1 is behind, still in step 6: the first difference comes first, the receive it owes after it
    write(flight, 1, 4, {"pipe": 0, "col": 1}, [collective(6, 0, "all_reduce", "col", (0, 1), "waiting", 9.0)], step=6)
    lines = diagnose(tmp_path)
    assert lines[1:3] == ["first difference: collective #0 of step 7:",
                          "  rank 0 issued all_reduce on axis col (256 B; group [0,1])"]
    assert lines[-1] == ("  -> rank 1 never issued the matching send (#0 to rank 3); it issued none; it waits in "
                         "all_reduce on axis col (group of ranks 0,1, 256 B), collective #0 of step 6, for 9.0 s; "
                         "it is behind, in step 6: look at rank 1")


def test_a_receive_whose_send_was_issued_is_a_stuck_transfer_and_a_lost_peer_is_named(tmp_path):
    flight = tmp_path / "flight"
    write(flight, 0, 3, {"pipe": 0}, [p2p(7, 0, 0, "send", 1, state="waiting", age=9.0)])
    write(flight, 1, 3, {"pipe": 1}, [p2p(7, 0, 0, "recv", 0, state="waiting", age=9.5, group=(0, 1, 2))])
    write(flight, 2, 3, {"pipe": 2}, [p2p(7, 0, 0, "recv", 1, state="waiting", age=9.5, group=(0, 1, 2))])
    (flight / "rank_0.json").unlink()  # rank 0 stopped reporting
    lines = diagnose(tmp_path)
    assert lines[1:4] == [
        "rank 2 is waiting for a receive from rank 1 (pipe stage 1 -> 2, step 7, [2,16,32] bfloat16, act 0 v0>v1) "
        "for 9.5 s, collective #0 of the step",
        "  -> rank 1 never issued the matching send (#0 to rank 2); it issued none; it waits in p2p on axis pipe "
        "(recv from 0 [2,16,32] bfloat16 (act 0 v0>v1), 2048 B), collective #0 of step 7, for 9.5 s: look at rank 1",
        "rank 1 is waiting for a receive from rank 0 (pipe stage 0 -> 1, step 7, [2,16,32] bfloat16, act 0 v0>v1) "
        "for 9.5 s, collective #0 of the step"]
    assert lines[4:] == ["  -> rank 0 wrote no flight record (stopped reporting): look at rank 0",
                         "  rank 0 stopped reporting (no flight record)"]
    # rank 0 wrote after all: it sent, and waits too (its own send is said by rank 1's lines)
    write(flight, 0, 3, {"pipe": 0}, [p2p(7, 0, 0, "send", 1, state="waiting", age=9.0)])
    assert diagnose(tmp_path)[4:] == ["  rank 0 issued the matching send (#0 to rank 1) (collective #0 of step 7, "
                                     "waiting there for 9.0 s): a stuck transfer or a network fault"]


def test_diagnose_json_carries_the_report(tmp_path, capsys):
    from axon.__main__ import main

    flight = tmp_path / "flight"
    write(flight, 0, 2, {"pipe": 0}, [p2p(7, 0, 0, "send", 1)])
    write(flight, 1, 2, {"pipe": 1}, [p2p(7, 0, 0, "recv", 0), p2p(7, 1, 1, "recv", 0, state="waiting", age=9.5)])
    assert main(["diagnose", str(tmp_path), "--json"]) is None
    report = json.loads(capsys.readouterr().out)
    assert (report["ranks_reporting"], report["world"], report["reasons"]) == (2, 2, {"hung": 2})
    assert report["folder"] == str(flight) and report["findings"] == diagnose(tmp_path)[1:]
    assert report["findings"][0].startswith("rank 1 is waiting for a receive from rank 0")
