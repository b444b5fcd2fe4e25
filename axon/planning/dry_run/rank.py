"""One rank of N, built and stepped on meta tensors under torch's fake process group.

What the trainer builds (grid, stage, shards, buckets, optimizer, prefetcher) is built by
the trainer itself, under `torch.device("meta")`: shapes and storages, no data. Steps run
one micro-batch per data x depth shard (a step of 64 micro-batches at 405B would take
minutes): the first records the prefetch order and creates AdamW's state, the second is
measured, its collectives from the engine's own trace and its memory by `LiveBytes`.
The full step follows from the schedule: every micro-batch runs the same collectives,
and 1F1B keeps at most `in_flight` micro-batches' activations on this stage. From the grid
on, `StrictNccl` (strict.py) checks every collective as NCCL would take it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist

from axon.planning.dry_run.meter import LiveBytes, ScalarsOnly
from axon.planning.dry_run.strict import StrictNccl

STEP_AXES = ("data", "data+depth")  # gradient buckets and the loss: once per step, never per micro-batch


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as a fused kernel runs it (what GPUs run): backward keeps q, k, v, the
    output and the log-sum-exp, never the [seq, seq] scores. On meta tensors torch would
    otherwise take its math path, which keeps them (CPU and GPU runs never do)."""
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
    return out


def _marking_incoming_gradients(transfer, meter: LiveBytes):
    """The pipeline's `transfer`, telling `meter` which receive buffers hold a gradient from
    the next stage (see `LiveBytes.peaks`)."""

    def marked(transfers, tensors, new_buffer, device):
        transfer(transfers, tensors, new_buffer, device)
        incoming = [tensors[(t.tensor, t.micro, t.chunk)] for t in transfers if t.op == "recv" and t.tensor == "grad"]
        meter.reclass(incoming, "incoming_gradients")

    return marked


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
    """Fused attention (above), and boolean-mask indexing on meta tensors (the cross-entropy's
    target logits) sized as if every token's target were on this rank: an index list of
    tokens entries, where a real rank holds fewer."""
    import axon.model.llama as llama
    from torch.fx.experimental import _config as fx_config

    engine = llama.causal_attention
    llama.causal_attention = fused_attention
    try:
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            yield
    finally:
        llama.causal_attention = engine


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def one_micro_batch(config, run: int = 1):
    """The config as the dry run steps it: one micro-batch of the real size per data x depth
    shard (the stage split depends on the model, not the batch); no GEMM timing (local:
    changes no collective or size); no weights to load; one traced step."""
    from axon.config import micro_batch_plan

    lay = config.layout
    micro, _ = micro_batch_plan(config)
    train = dataclasses.replace(config.train, gemm_tuning=False, trace_steps=1, resume="", micro_batch=micro,
                                global_batch=run * micro * lay.data * lay.depth)
    return dataclasses.replace(config, train=train, init_from="")


def in_flight(stage: int, stages: int, micro_batches: int, chunks: int = 1) -> float:
    """The most micro-batches whose activations this stage holds at once under the engine's
    schedule (forwards run and not yet run backward); interleaved, in whole stages (each of
    the `chunks` forwards holds 1/chunks of one)."""
    from axon.spec.schedules import one_f_one_b_with_transfers

    if stages == 1:
        return 1  # the trainer runs each micro-batch's backward right after its forward
    schedule = (one_f_one_b_with_transfers(stage, stages, micro_batches, chunks) if chunks > 1
                else one_f_one_b_with_transfers(stage, stages, micro_batches))
    held = most = 0
    for action in schedule:
        if action[0] in ("F", "B"):
            held += 1 if action[0] == "F" else -1
            most = max(most, held)
    return most / chunks


def full_step(events, finish_at: float, micro_batches: int, run: int = 1) -> Counter:
    """(op, axis, bytes) -> count of a step of `micro_batches` from a traced one-micro-batch
    step: what was issued before the gradient buckets finished, bar the buckets, once per
    micro-batch."""
    counts = Counter()
    for e in events:
        if e.op == "recv":
            continue  # each hand-off between stages is counted once, at its sender (as perfmodel prices it)
        per_micro_batch = e.issued < finish_at and e.axis not in STEP_AXES
        counts[(e.op, e.axis, e.bytes)] += micro_batches // run if per_micro_batch else 1
    return counts


def run_rank(config, rank: int) -> dict:
    """Build rank `rank` of config.layout's world, run two one-micro-batch steps, return its
    bytes (activations for the schedule's micro-batches in flight) and its step's collectives."""
    from axon.config import micro_batch_plan
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer

    _, micro_batches = micro_batch_plan(config)
    chunks = getattr(config.layout, "virtual_stages", 1)
    # Interleaved 1F1B needs a multiple of `pipe` micro-batches: run `pipe`, whose schedule
    # already holds its peak in flight; otherwise one, and the schedule says how many more.
    run = config.layout.pipe if chunks > 1 else 1
    config = one_micro_batch(config, run)
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
                meter.exclude(optimizer + [p.grad for p in params if p.grad is not None])
                finish, mark = trainer.buckets.finish, {}

                def finish_marked():
                    mark["at"] = time.perf_counter()  # the trace's host clock
                    finish()

                trainer.buckets.finish = finish_marked
                if trainer.pipeline is not None:
                    trainer.pipeline.transfer = _marking_incoming_gradients(trainer.pipeline.transfer, meter)
                try:
                    with meter:
                        trainer.step(1)
                        meter.reclass([p.grad for p in params if p.grad is not None], "gradients")
                finally:
                    del trainer.buckets.finish
                    if trainer.pipeline is not None:
                        del trainer.pipeline.transfer
            peaks = meter.peaks()
            stage, stages = grid.coord("pipe"), grid.size("pipe")
            flight = in_flight(stage, stages, micro_batches, chunks) if run == 1 else 1
            memory = {
                "parameters": _storage_bytes(params),
                "gradients": _storage_bytes([p.grad for p in params]),
                "optimizer": _storage_bytes(optimizer),
                "gathered_weights": peaks["gathered_weights"],
                # the other micro-batches in flight hold what one holds when its backward begins
                "activations": round(peaks["activations"] + (flight - 1) * peaks["held_for_backward"]),
                "gradient_blocks": peaks["gradient_blocks"],
            }
            memory["total"] = sum(memory.values())
            return {"rank": rank, "coords": dict(grid.coords), "stage": stage,
                    "blocks": sum(1 for _ in trainer.model.layers), "first": trainer.model.first_stage,
                    "last": trainer.model.last_stage, "memory": memory, "micro_batches": micro_batches,
                    "in_flight": flight, "activations_one_micro_batch": peaks["activations"],
                    "held_for_backward": peaks["held_for_backward"],
                    "collectives": full_step(trainer.traced_events, mark["at"], micro_batches, run),
                    "all_meta": all(p.is_meta for p in params), "strict_nccl": strict.report()}
        finally:
            grid.destroy()
