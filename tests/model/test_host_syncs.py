"""A training micro-batch reads nothing on the host (DESIGN section 10): no .item(), no nonzero,
no boolean-mask indexing, no RoPE tables rebuilt on the host each forward."""

from __future__ import annotations

import torch

from axon.kernels import rope
from axon.model import Llama, initialize_parameters
from axon.model import llama as llama_module
from axon.parallel.grid import Grid
from axon.spec.layout import Layout
from axon.spec.shapes import preset
from axon.testing.host_syncs import HostSyncs


def tiny_model(dtype=torch.float32):
    grid = Grid(Layout(), 0)
    model = Llama(preset("tiny"), grid, compute_dtype=dtype)
    initialize_parameters(model, grid, seed=3)
    return model


def batch(shape, seed=0):
    tokens = torch.randint(0, shape.vocab, (2, shape.seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


class SyncsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        grad.sum().item()
        grad = grad.clone()
        grad[grad > 0] -= 1.0
        return grad


def test_the_recorder_sees_each_kind_of_host_sync_in_forward_and_backward():
    t = torch.arange(6.0)
    x = torch.ones(3, requires_grad=True)
    with HostSyncs() as syncs:
        t.sum().item()
        bool(t[0])
        t.nonzero()
        t[t > 2] = 0.0
        t.cpu()
        t.tolist()
        (t + 1).exp().masked_fill_(t > 1, 0.0)  # none: static shapes, nothing read
        SyncsInBackward.apply(x).sum().backward()
    assert syncs.calls == ["item", "item", "nonzero", "index_put_[bool]", "cpu", "tolist",
                           "item", "index[bool]", "index_put_[bool]"]  # grad[mask] -= 1: a read, then a write


def test_forward_and_backward_of_the_loss_make_no_host_sync():
    model = tiny_model()
    ids, targets = batch(model.shape)
    keep = torch.rand(targets.shape, generator=torch.Generator().manual_seed(1)) < 0.8
    model.token_losses(ids, targets, keep)  # the first forward may build tables; a step after it may not sync
    with HostSyncs() as syncs:
        losses = model.token_losses(ids, targets, keep)
        losses.sum().backward()
    assert syncs.calls == []


def test_rope_tables_are_built_once_and_equal_rotary_tables(monkeypatch):
    built = []

    def counting(*args, **kwargs):
        built.append(args)
        return rope.rotary_tables(*args, **kwargs)

    monkeypatch.setattr(llama_module, "rotary_tables", counting)
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model(dtype)
        ids, targets = batch(model.shape)
        for seed in range(3):
            model.token_losses(*batch(model.shape, seed)).sum().backward()
        assert len(built) == 1
        built.clear()
        s = model.shape
        cos, sin = rope.rotary_tables(s.seq_len, s.head_dim, s.rope_theta, scaling=(
            s.rope_scaling_factor, s.rope_low_freq_factor, s.rope_high_freq_factor, s.rope_original_context))
        cached = model.rope_tables(s.seq_len, ids.device)
        # The same float64 -> float32 -> compute dtype casts as before the cache.
        assert torch.equal(cached[0], cos.to(dtype)) and torch.equal(cached[1], sin.to(dtype))
        assert cached[0].dtype == dtype
        assert not any("rope" in name for name in model.state_dict())
        assert list(model.buffers()) == []


def test_rope_tables_serve_training_after_an_inference_mode_forward():
    model = tiny_model()
    ids, targets = batch(model.shape)
    with torch.inference_mode():
        model.token_losses(ids, targets)
    model.token_losses(ids, targets).sum().backward()  # inference tensors could not be saved for backward


def test_rope_tables_keep_a_few_lengths_only():
    model = tiny_model()
    for seq in range(1, 10):
        model.rope_tables(seq, torch.device("cpu"))
    assert len(model._rope_tables) == 4
    cos, _ = model.rope_tables(9, torch.device("cpu"))
    assert cos.shape == (9, model.shape.head_dim)
