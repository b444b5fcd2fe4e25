"""The point-to-point deadlock checker: NCCL's rules on CPU, both ways (DESIGN §10).

It must find the deadlock of the earlier order (unbatched sends left in flight, blocking
receives), pass the engine's schedule for every p <= 16 and m <= 64 without running it, and
pass the traces the engine really records, with data, depth and tensor axes beside pipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.spec.deadlock_check import P2POp, check_trace_files, planned_ops, replay
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.spec.schedules import Transfer, one_f_one_b, one_f_one_b_with_transfers
from axon.testing.spawn import COLLECTIVE_TIMEOUT, run_distributed

REPO = Path(__file__).resolve().parents[2]


def _op(rank, op, peer, seq, label, batch=None):
    return P2POp(rank, op, peer, seq if batch is None else batch, seq, label)


def test_the_earlier_order_deadlocks_at_two_stages_and_two_micro_batches():
    # Stage 0 sent act 0 and act 1 (F0, F1), then waited for grad 0; stage 1 received act 0,
    # ran F0 and B0, sent grad 0, then waited for act 1. Each op was its own batch.
    earlier = {
        0: [_op(0, "send", 1, 0, "act 0"), _op(0, "send", 1, 1, "act 1"),
            _op(0, "recv", 1, 2, "grad 0"), _op(0, "recv", 1, 3, "grad 1")],
        1: [_op(1, "recv", 0, 0, "act 0"), _op(1, "send", 0, 1, "grad 0"),
            _op(1, "recv", 0, 2, "act 1"), _op(1, "send", 0, 3, "grad 1")],
    }
    verdict = replay(earlier)
    assert not verdict.completed and not verdict.unmatched
    assert verdict.stuck == {0: [earlier[0][1]], 1: [earlier[1][1]]}
    assert "rank 0 is stuck on send act 1 to rank 1" in str(verdict)
    # The same operations with the crossing pair batched on both sides complete.
    batched = {0: earlier[0][:1] + [_op(0, "send", 1, 1, "act 1", 1), _op(0, "recv", 1, 2, "grad 0", 1)]
               + earlier[0][3:],
               1: earlier[1][:1] + [_op(1, "send", 0, 1, "grad 0", 1), _op(1, "recv", 0, 2, "act 1", 1)]
               + earlier[1][3:]}
    assert replay(batched).completed


def earlier_order(stages: int, micro_batches: int) -> dict[int, list[P2POp]]:
    """The order before batching: a blocking receive before each forward or backward that
    needs one, a send left in flight after it; every operation its own batch."""
    ops = {}
    for s in range(stages):
        mine = []
        for kind, j in one_f_one_b(s, stages, micro_batches):
            before, after = ((s - 1, "act"), (s + 1, "act")) if kind == "F" else ((s + 1, "grad"), (s - 1, "grad"))
            if 0 <= before[0] < stages:
                mine.append(_op(s, "recv", before[0], len(mine), f"{before[1]} {j}"))
            if 0 <= after[0] < stages:
                mine.append(_op(s, "send", after[0], len(mine), f"{after[1]} {j}"))
        ops[s] = mine
    return ops


def test_the_earlier_order_deadlocks_for_every_stage_count_and_two_or_more_micro_batches():
    assert earlier_order(2, 2)[0] == [_op(0, "send", 1, 0, "act 0"), _op(0, "send", 1, 1, "act 1"),
                                      _op(0, "recv", 1, 2, "grad 0"), _op(0, "recv", 1, 3, "grad 1")]
    for stages in range(2, 17):
        assert replay(earlier_order(stages, 1)).completed  # one micro-batch never crosses
        for micro_batches in range(2, 65):
            assert not replay(earlier_order(stages, micro_batches)).completed, (stages, micro_batches)


def test_a_send_nobody_receives_and_a_three_rank_cycle_are_found():
    lonely = replay({0: [_op(0, "send", 1, 0, "act 0")], 1: []})
    assert not lonely.completed and lonely.unmatched == [_op(0, "send", 1, 0, "act 0")]
    # Each rank sends to the next before receiving from the previous: a cycle of waits.
    ring = {r: [_op(r, "send", (r + 1) % 3, 0, "x"), _op(r, "recv", (r - 1) % 3, 1, "x")] for r in range(3)}
    verdict = replay(ring)
    assert not verdict.completed and sorted(verdict.stuck) == [0, 1, 2] and not verdict.unmatched
    # Batched, the ring completes.
    assert replay({r: [_op(r, "send", (r + 1) % 3, 0, "x", 0), _op(r, "recv", (r - 1) % 3, 1, "x", 0)]
                   for r in range(3)}).completed


def test_the_schedule_passes_for_every_stage_count_up_to_16_and_micro_batches_up_to_64():
    for stages in range(2, 17):
        assert replay(planned_ops(stages, 1, forward_only=True)).completed, stages
        for micro_batches in range(1, 65):
            ops = planned_ops(stages, micro_batches)
            verdict = replay(ops)
            assert verdict.completed, (stages, micro_batches, str(verdict))
            # each stage moves every micro-batch's activations and gradient once per neighbour
            for stage, mine in ops.items():
                neighbours = (stage > 0) + (stage < stages - 1)
                assert len(mine) == 2 * micro_batches * neighbours


def test_interleaved_schedules_pass_with_every_send_meeting_the_same_tensor():
    # the matrix, then wider: every p <= 8, v <= 4 and m a multiple of p up to 8p
    for stages, chunks, micro_batches in [(p, v, k * p) for p in (2, 4) for v in (2, 3) for k in (1, 2, 4)]:
        verdict = replay(planned_ops(stages, micro_batches, chunks=chunks))
        assert verdict.completed and not verdict.mismatched, (stages, chunks, micro_batches, str(verdict))
    for stages in range(2, 9):
        for chunks in (2, 3, 4):
            assert replay(planned_ops(stages, 1, forward_only=True, chunks=chunks)).completed, (stages, chunks)
            for micro_batches in range(stages, 8 * stages + 1, stages):
                ops = planned_ops(stages, micro_batches, chunks=chunks)
                assert replay(ops).completed, (stages, chunks, micro_batches)
                # every chunk boundary moves each micro-batch's activations and gradient once
                sends = sorted(op.label for mine in ops.values() for op in mine if op.op == "send")
                boundaries = range(stages * chunks - 1)
                assert sends == sorted([f"act {j} v{q}>v{q + 1}" for q in boundaries for j in range(micro_batches)]
                                       + [f"grad {j} v{q + 1}>v{q}" for q in boundaries for j in range(micro_batches)])


def test_a_send_that_meets_another_tensors_receive_is_reported():
    # p = 2 interleaved: both neighbours are one rank. Rank 0 sends act then grad in one batch;
    # rank 1 receives them in the other order: every operation completes, with the wrong tensors.
    ops = {0: [_op(0, "send", 1, 0, "act 0 v0>v1", 0), _op(0, "send", 1, 1, "grad 0 v2>v1", 0)],
           1: [_op(1, "recv", 0, 0, "grad 0 v2>v1", 0), _op(1, "recv", 0, 1, "act 0 v0>v1", 0)]}
    verdict = replay(ops)
    assert not verdict.completed and not verdict.stuck and not verdict.unmatched
    assert verdict.mismatched == [(ops[0][0], ops[1][0]), (ops[0][1], ops[1][1])]
    assert str(verdict).startswith("wrong tensors: rank 0: send act 0 v0>v1 to rank 1 (seq 0) pairs with rank 1's "
                                   "recv grad 0 v2>v1 from rank 0 (seq 0)")
    # the receives in the sends' order: right
    assert replay({0: ops[0], 1: [_op(1, "recv", 0, 0, "act 0 v0>v1", 0), _op(1, "recv", 0, 1, "grad 0 v2>v1", 0)]}).completed


def test_the_checker_needs_no_torch_and_reads_trace_files_from_the_shell(tmp_path):
    code = "import sys, axon.spec.deadlock_check; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    # two ranks' Chrome traces of the earlier order at p = 2, m = 2: a deadlock, exit status 1
    order = {0: [("send", "act 0"), ("send", "act 1"), ("recv", "grad 0"), ("recv", "grad 1")],
             1: [("recv", "act 0"), ("send", "grad 0"), ("recv", "act 1"), ("send", "grad 1")]}
    paths = []
    for rank, ops in order.items():
        records = [{"name": f"{op} [pipe]", "ph": "X", "pid": rank, "tid": "pipe",
                    "args": {"peer": 1 - rank, "batch": seq, "seq": seq, "label": label}}
                   for seq, (op, label) in enumerate(ops)]
        paths.append(tmp_path / f"comm_trace_rank{rank}.json")
        paths[-1].write_text(json.dumps({"traceEvents": records}))
    out = subprocess.run([sys.executable, "-m", "axon.spec.deadlock_check", *map(str, paths)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "rank 1 is stuck on send grad 0 to rank 0 (seq 1)" in out.stdout, out


MODEL = {"hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": 64, "seq_len": 8}


def traced_runs(rank, world, layout, out_dirs):
    """Two steps per micro-batch count; the second step's Chrome trace is written. Per count:
    the transfers as recorded, whether a send and a receive were waited for late (see
    test_the_engine_traces_pass_the_checker), and what was left in flight after the run."""
    shards = layout.data * layout.depth
    out = []
    for micro_batches, out_dir in out_dirs.items():
        config = build_config({
            "model": {**MODEL, "layers": layout.pipe * layout.virtual_stages},
            "layout": {a: getattr(layout, a) for a in ("data", "pipe", "depth", "row", "col", "virtual_stages")},
            "out_dir": str(out_dir),
            "train": {"steps": 2, "global_batch": micro_batches * shards, "micro_batch": 1, "trace_steps": 1}})
        grid = Grid(layout, rank)
        trainer = Trainer(config, grid, torch.device("cpu"))
        trainer.fit()
        p2p = [e for e in trainer.traced_events if e.op in ("send", "recv")]
        # A send waited for after a later batch was issued; a receive waited for after another
        # transfer of its batch had been waited for and that one's op had computed (host clock).
        late_send = any(e.op == "send" and any(f.args["batch"] > e.args["batch"] and f.issued < e.wait_start
                                               for f in p2p) for e in p2p)
        late_recv = any(e.op == "recv" and any(f is not e and f.args["batch"] == e.args["batch"]
                                               and f.completed < e.wait_start for f in p2p) for e in p2p)
        left = (grid.trace.unwaited, len(trainer.pipeline.in_flight), len(trainer.pipeline.arriving))
        out.append({"ops": [(e.op, e.args["peer"], e.args["batch"], e.args["seq"], e.args["label"]) for e in p2p],
                    "late": (late_send, late_recv), "left": left})
        grid.destroy()
    return out


CASES = [(Layout(data=2, pipe=2, col=2), (1, 2, 3, 8)), (Layout(pipe=3, depth=2), (1, 2, 3, 8)),
         (Layout(pipe=4, row=2), (1, 2, 3, 8)),
         (Layout(pipe=2, depth=2, virtual_stages=2), (2, 4)), (Layout(pipe=4, virtual_stages=2), (4, 8))]


def case_id(layout: Layout) -> str:
    return f"{layout.data}x{layout.pipe}x{layout.depth}x{layout.row}x{layout.col}v{layout.virtual_stages}"


def every_case(rank, world, cases, store_dir):
    """All layouts in one spawn (a spawn of 8 ranks costs about 7 s on 2 cores): for each, the
    ranks it needs leave the spawn's world and form one of its size through a fresh file store;
    the others go ahead to the next layout's and wait there. The spawn's world is formed again
    at the end for run_distributed's barrier."""
    dist.destroy_process_group()
    out = []
    for index, (layout, out_dirs) in enumerate(cases):
        size = layout.world_size
        if rank >= size:
            out.append(None)
            continue
        dist.init_process_group("gloo", init_method=f"file://{store_dir}/case{index}", rank=rank, world_size=size,
                                timeout=COLLECTIVE_TIMEOUT)
        out.append(traced_runs(rank, size, layout, out_dirs))
        dist.barrier()  # as run_distributed does: nobody tears down while a peer still talks to it
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{store_dir}/end", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    return out


@pytest.fixture(scope="module")
def engine_traces(tmp_path_factory):
    """Per case: its micro-batch counts' output folders and every rank's traced_runs."""
    root = tmp_path_factory.mktemp("engine_traces")
    cases = [(layout, {m: root / case_id(layout) / f"m{m}" for m in counts}) for layout, counts in CASES]
    world = max(layout.world_size for layout, _ in CASES)
    results = run_distributed(world, every_case, cases, str(root))
    return {case_id(layout): (out_dirs, [runs[index] for runs in results[:layout.world_size]])
            for index, (layout, out_dirs) in enumerate(cases)}


@pytest.mark.parametrize("layout, counts", CASES, ids=lambda x: case_id(x) if isinstance(x, Layout) else "")
def test_the_engine_traces_pass_the_checker(engine_traces, layout, counts):
    out_dirs, results = engine_traces[case_id(layout)]
    stride, p, v = layout.strides()["pipe"], layout.pipe, layout.virtual_stages
    for index, m in enumerate(counts):
        traces = sorted(out_dirs[m].glob("comm_trace_rank*.json"))
        assert len(traces) == layout.world_size
        verdict = check_trace_files(traces)
        assert verdict.completed, (m, str(verdict))
        # Transfers overlap compute: waited for just before their use, sends later still; nothing
        # is left in flight after a step.
        assert any(runs[index]["late"][0] for runs in results), m
        two_receives = any(sum(t.op == "recv" for t in action) > 1 for s in range(p)
                           for action in one_f_one_b_with_transfers(s, p, m, v) if isinstance(action[0], Transfer))
        assert any(runs[index]["late"][1] for runs in results) == two_receives, m  # never in plain 1F1B
        assert all(runs[index]["left"] == (0, 0, 0) for runs in results), m
        for rank, runs in enumerate(results):
            ops, stage = runs[index]["ops"], layout.coords(rank)["pipe"]
            first = rank - stage * stride
            ring = v > 1  # interleaved: the last stage feeds the first
            neighbours = {first + (stage + d) % p * stride for d in (-1, 1) if ring or 0 <= stage + d < p}
            assert {peer for _, peer, _, _, _ in ops} == neighbours  # same data, depth, row, col
            assert [seq for _, _, _, seq, _ in ops] == list(range(len(ops)))
            # every micro-batch's activations leave each chunk but the model's last once, and
            # their gradient leaves each chunk but the first once
            sent = sorted(label for op, peer, _, _, label in ops if op == "send")
            expected = [Transfer("send", "act", j, c).label(stage, p) for c in range(v) for j in range(m)
                        if c * p + stage < p * v - 1]
            expected += [Transfer("send", "grad", j, c).label(stage, p) for c in range(v) for j in range(m)
                         if c * p + stage > 0]
            assert sent == sorted(expected) and len(ops) == 2 * len(expected)
            # and the engine issues exactly the planned schedule, batches included
            planned = planned_ops(p, m, chunks=v)[stage]
            assert [(op, batch, label) for op, _, batch, _, label in ops] == \
                [(p.op, p.batch, p.label) for p in planned]
