"""Data-parallel gradients live in persistent bucket buffers, one copy, and sum correctly."""

from __future__ import annotations

from pathlib import Path

import torch

from axon.config import build_config
from axon.parallel import data_parallel
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout
from axon.testing.spawn import run_distributed

MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}
SWITCHES = ("all_reduce", "reduce_scatter", "all_gather", "data_parallel")
AXON = Path(__file__).resolve().parents[2] / "axon"


def make_trainer(layout: Layout, rank: int, overlap: bool) -> Trainer:
    config = build_config({
        "model": MODEL, "layout": {a: getattr(layout, a) for a in ("data", "depth", "row", "col")},
        # 2 micro-batches per rank at data=2: gradients accumulate in place across them.
        "train": {"steps": 2, "global_batch": 8, "micro_batch": 2, "lr": 1e-3, "seed": 5},
        "overlap": {**dict.fromkeys(SWITCHES, overlap), "bucket_mb": 0.02}})  # several buckets
    return Trainer(config, Grid(layout, rank), torch.device("cpu"))


def views_of_buffers(trainer: Trainer) -> bool:
    """Every bucketed gradient lies inside its bucket's buffer, in the same storage."""
    for bucket in trainer.buckets.buckets:
        start = bucket.buffer.data_ptr()
        end = start + bucket.buffer.numel() * bucket.buffer.element_size()
        for param in bucket.params:
            grad = param.grad
            same_storage = grad.untyped_storage().data_ptr() == bucket.buffer.untyped_storage().data_ptr()
            if not (same_storage and start <= grad.data_ptr() < end):
                return False
    return True


def bucketed_steps(rank, world, layout, overlap):
    # Autograd and ORS must accumulate into the views themselves: count the gradients a bucket
    # finds replaced (and would have to copy in) when it launches.
    replaced, adopt = [], data_parallel._Bucket.adopt_gradients
    def spy(bucket):
        replaced.extend(p for p, view in bucket.views.items() if p.grad is not view)
        adopt(bucket)
    data_parallel._Bucket.adopt_gradients = spy
    trainer = make_trainer(layout, rank, overlap)
    names = {param: name for name, param in trainer.model.named_parameters()}
    buffers = [bucket.buffer.data_ptr() for bucket in trainer.buckets.buckets]
    first_grads, checks = None, []
    for step in range(2):
        trainer.step(step)
        checks.append((views_of_buffers(trainer), [b.buffer.data_ptr() for b in trainer.buckets.buckets] == buffers))
        if step == 0:
            first_grads = {names[p]: p.grad.clone() for p in trainer.model.parameters()}
    bucketed = sum(len(b.params) for b in trainer.buckets.buckets)
    trainer.grid.destroy()
    return first_grads, checks + [len(replaced)], bucketed, len(list(trainer.model.parameters()))


def test_gradients_are_views_of_persistent_buffers_and_match_one_process():
    # One process, no buckets: the reference gradient of the whole batch.
    reference = make_trainer(Layout(), 0, overlap=True)
    assert reference.buckets.buckets == []
    reference.step(0)
    expected = {name: p.grad for name, p in reference.model.named_parameters()}

    for overlap in (False, True):
        for rank, (grads, checks, bucketed, total) in enumerate(run_distributed(2, bucketed_steps, Layout(data=2), overlap)):
            label = f"overlap {overlap}, rank {rank}"
            assert bucketed == total, label  # at data=2 every parameter is in a bucket
            # Views after each step, buffers never reallocated, nothing copied in.
            assert checks == [(True, True)] * 2 + [0], label
            for name, grad in grads.items():
                torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=f"{label} {name}")


def test_switches_give_identical_gradients_with_depth():
    # data x depth: sharded weights' ORS shards accumulate into the views, the norm gains sit
    # in a data+depth bucket; the overlap switches change no bit.
    layout = Layout(data=2, depth=2)
    off = run_distributed(4, bucketed_steps, layout, False)
    on = run_distributed(4, bucketed_steps, layout, True)
    for rank, ((grads_off, checks_off, *_), (grads_on, checks_on, *_)) in enumerate(zip(off, on)):
        assert checks_off == checks_on == [(True, True)] * 2 + [0], rank
        assert all(torch.equal(grads_on[name], grads_off[name]) for name in grads_off), rank


def test_no_private_torch_api():
    users = [str(path) for path in AXON.rglob("*.py") if "torch._utils" in path.read_text()]
    assert users == []
