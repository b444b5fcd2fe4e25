"""One rank of N, built and stepped on meta tensors under torch's fake process group.

What the trainer builds (grid, stage, shards, buckets, optimizer, prefetcher) is built by
the trainer itself, under `torch.device("meta")`: shapes and storages, no data. Each step
runs the micro-batches this rank's stage needs to show its peak (`rehearsed_micro_batches`:
the schedule's warm-up and two of its steady-state forward-backward pairs, at least two
micro-batches; a step of 64 micro-batches at 405B would take minutes, and the further
steady-state pairs repeat the second): the first step records the prefetch order and
creates AdamW's state, the second is measured, its collectives from the engine's own trace
and its memory by `LiveBytes`: the activations of every micro-batch the schedule keeps in
flight, gradient blocks still in their reduce-scatter from one micro-batch's backward into
the next, as the engine holds them. The step's collectives follow from the schedule: every
micro-batch runs the same ones. From the grid on, `StrictNccl` (strict.py) checks every
collective as NCCL would take it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import _disable_current_modes

from axon.planning.dry_run.meter import LiveBytes, ScalarsOnly
from axon.planning.dry_run.strict import StrictNccl

STEP_AXES = ("data", "data+depth")  # gradient buckets and the loss: once per step, never per micro-batch


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as a fused kernel runs it (what GPUs run): backward keeps q, k, v, the
    output and the log-sum-exp, never the [seq, seq] scores. On meta tensors torch would
    otherwise take its math path, which keeps them (CPU and GPU runs never do)."""
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
    return out


@contextmanager
def fake_world(rank: int, world: int):
    """torch's fake process group as rank `rank` of `world`, for meta and CPU tensors."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("cpu:fake,meta:fake", rank=rank, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def _as_on_gpus():
    """Fused attention (above); boolean-mask indexing on meta tensors (the cross-entropy's
    target logits) sized as if every token's target were on this rank: an index list of
    tokens entries, where a real rank holds fewer; and NCCL's one work per point-to-point
    batch: waiting for a stage's receive also completes the send batched with it, and frees
    the sent tensor (the fake backend, like gloo, returns a work per transfer, so a sent
    gradient would stay until the step's end)."""
    import axon.model.llama as llama
    import axon.parallel.p2p as p2p
    from torch.fx.experimental import _config as fx_config

    engine, exchange = llama.causal_attention, p2p.exchange

    def one_work(transfers, axis):
        batch = exchange(transfers, axis)
        if batch is not None and len(batch.works) > 1:
            batch.works = batch.works[:1]  # fake works are done at once: one stands for the batch
        return batch

    llama.causal_attention, p2p.exchange = fused_attention, one_work
    try:
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            yield
    finally:
        llama.causal_attention, p2p.exchange = engine, exchange


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def rehearsal_config(config, run: int):
    """The config as the dry run steps it: `run` micro-batches of the real size per data x depth
    shard (the stage split depends on the model, not the batch); no GEMM timing (local:
    changes no collective or size); no weights to load; one traced step."""
    from axon.config import micro_batch_plan

    lay = config.layout
    micro, _ = micro_batch_plan(config)
    train = dataclasses.replace(config.train, gemm_tuning=False, trace_steps=1, resume="", micro_batch=micro,
                                global_batch=run * micro * lay.data * lay.depth)
    return dataclasses.replace(config, train=train, init_from="")


def rehearsed_micro_batches(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> int:
    """How many of the step's `micro_batches` the dry run steps on stage `stage`: the fewest
    whose schedule runs the real one's warm-up and then at least two steady-state
    forward-backward pairs (p - s + 1 in plain 1F1B; at least 2; interleaved, a multiple of
    `stages`), all of them when the step has no more. Its peak in flight is the real one's,
    and so is every transition the engine's step goes through (warm-up into steady state,
    one steady pair into the next, steady state into the drain)."""
    from axon.spec.schedules import in_flight_peak, warmup_forwards

    step = stages if chunks > 1 else 1
    run = step
    while run < micro_batches and (run < 2 or chunks * run - warmup_forwards(stage, stages, run, chunks) < 2):
        run += step
    run = min(run, micro_batches)
    assert in_flight_peak(stage, stages, run, chunks) == in_flight_peak(stage, stages, micro_batches, chunks)
    return run


def in_flight(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> float:
    """The most micro-batches whose activations this stage holds at once under the engine's
    schedule (forwards run and not yet run backward); interleaved, in whole stages (each of
    the `chunks` forwards holds 1/chunks of one)."""
    from axon.spec.schedules import in_flight_peak

    return 1 if stages == 1 else in_flight_peak(stage, stages, micro_batches, chunks)


def full_step(events, finish_at: float, micro_batches: int, run: int) -> Counter:
    """(op, axis, bytes) -> count of a step of `micro_batches` from a traced step of `run`:
    what was issued before the gradient buckets finished, bar the buckets, scaled from `run`
    micro-batches to `micro_batches` (every micro-batch issues the same ones)."""
    counts, per_micro_batch = Counter(), Counter()
    for e in events:
        if e.op == "recv":
            continue  # each hand-off between stages is counted once, at its sender (as perfmodel prices it)
        if e.issued < finish_at and e.axis not in STEP_AXES:
            per_micro_batch[(e.op, e.axis, e.bytes)] += 1
        else:
            counts[(e.op, e.axis, e.bytes)] += 1
    for key, count in per_micro_batch.items():
        counts[key] += count * micro_batches // run if count % run == 0 else round(count * micro_batches / run)
    return counts


def run_rank(config, rank: int) -> dict:
    """Build rank `rank` of config.layout's world, run two steps of the micro-batches its stage
    needs (rehearsed_micro_batches), return its bytes at the measured step's peak and the
    collectives of a step of the real number of micro-batches."""
    from axon.config import micro_batch_plan
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer

    _, micro_batches = micro_batch_plan(config)
    chunks = getattr(config.layout, "virtual_stages", 1)
    stages = config.layout.pipe
    run = rehearsed_micro_batches(config.layout.coords(rank)["pipe"], stages, micro_batches, chunks)
    config = rehearsal_config(config, run)
    world = config.layout.world_size
    with fake_world(rank, world), StrictNccl() as strict:  # every collective from the grid on
        grid = Grid(config.layout, rank)
        try:
            with torch.device("meta"):
                trainer = Trainer(config, grid, torch.device("meta"), peak_tflops=1.0)
            params = list(trainer.model.parameters())
            if not all(p.is_meta for p in params):
                raise RuntimeError("the dry run built a parameter with real storage")
            meter = LiveBytes()
            with _as_on_gpus():
                with ScalarsOnly():  # step 0: records the prefetch order, creates AdamW's state
                    trainer.step(0)
                optimizer = [s for state in trainer.optimizer.state.values() for s in state.values() if s.is_meta]
                meter.exclude(params, weights=True)
                meter.exclude(optimizer)
                meter.exclude([p.grad for p in params if p.grad is not None], gradients=True)
                finish, mark = trainer.buckets.finish, {}

                def finish_marked():
                    mark["at"] = time.perf_counter()  # the trace's host clock
                    finish()

                trainer.buckets.finish = finish_marked
                step = trainer.optimizer.step

                def fused_step(*args, **kwargs):
                    # On a GPU AdamW runs fused, one kernel with no temporaries; on meta tensors
                    # torch takes its per-tensor path, whose temporaries the meter must not see.
                    with _disable_current_modes(), ScalarsOnly():
                        return step(*args, **kwargs)

                trainer.optimizer.step = fused_step
                try:
                    with meter:
                        trainer.step(1)
                        meter.reclass([p.grad for p in params if p.grad is not None], "gradients")
                finally:
                    del trainer.buckets.finish
                    trainer.optimizer.step = step
            peaks = meter.peaks()
            stage = grid.coord("pipe")
            memory = {
                "parameters": _storage_bytes(params),
                "gradients": _storage_bytes([p.grad for p in params]),
                "optimizer": _storage_bytes(optimizer),
                "gathered_weights": peaks["gathered_weights"],
                "activations": peaks["activations"],
                "gradient_blocks": peaks["gradient_blocks"],
            }
            memory["total"] = sum(memory.values())
            return {"rank": rank, "coords": dict(grid.coords), "stage": stage,
                    "blocks": sum(1 for _ in trainer.model.layers), "first": trainer.model.first_stage,
                    "last": trainer.model.last_stage, "memory": memory, "micro_batches": micro_batches,
                    "rehearsed_micro_batches": run, "in_flight": in_flight(stage, stages, micro_batches, chunks),
                    "collectives": full_step(trainer.traced_events, mark["at"], micro_batches, run),
                    "all_meta": all(p.is_meta for p in params), "strict_nccl": strict.report()}
        finally:
            grid.destroy()
