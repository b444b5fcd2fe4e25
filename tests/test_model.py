"""The model against independent references: a plain PyTorch Llama, published sizes, hand sums."""

from __future__ import annotations

import torch

from axon.grid import Grid
from axon.model import Llama, initialize_parameters
from axon.model import init as init_module
from axon.parallel.gather import full_parameters
from benchmarks.plain_llama import PlainLlama
from perfmodel.flops import flops_per_token, matmul_params
from perfmodel.layout import Layout
from perfmodel.models import ModelShape, preset


def test_one_process_axon_equals_plain_pytorch():
    shape = ModelShape(layers=2, hidden=96, heads=16, kv_heads=4, ffn=160, vocab=200, seq_len=24)
    grid = Grid(Layout(), 0)
    model = Llama(shape, grid)
    initialize_parameters(model, grid, seed=11)
    plain = PlainLlama(shape)
    plain.load_state_dict(full_parameters(model, grid))
    tokens = torch.randint(0, shape.vocab, (3, shape.seq_len + 1), generator=torch.Generator().manual_seed(0))
    ids, targets = tokens[:, :-1], tokens[:, 1:]

    logits, plain_logits = model(ids), plain(ids)
    assert (logits - plain_logits).abs().max() < 1e-5 * plain_logits.abs().max()
    loss = model.token_losses(ids, targets).mean()
    plain_loss = plain.loss(ids, targets)
    assert abs(loss.item() - plain_loss.item()) < 1e-6 * plain_loss.item()
    loss.backward()
    plain_loss.backward()
    plain_grads = dict(plain.named_parameters())
    for name, param in model.named_parameters():
        want = plain_grads[name].grad.reshape(-1)
        assert (param.grad - want).norm() <= 1e-5 * want.norm(), name


def test_initialization_draws_the_same_rows_whatever_the_slab(monkeypatch):
    monkeypatch.setattr(init_module, "CHUNK_ELEMENTS", 40)  # 40 // 7 = 5 rows per chunk
    full = init_module._normal_rows("w", 3, (23, 7), slice(0, 23), std=1.0)
    for rows in (slice(0, 4), slice(3, 11), slice(10, 23), slice(22, 23)):
        assert torch.equal(init_module._normal_rows("w", 3, (23, 7), rows, std=1.0), full[rows])
    assert full.std().item() > 0.5  # it is noise, not zeros
    other = init_module._normal_rows("v", 3, (23, 7), slice(0, 23), std=1.0)
    assert not torch.equal(full, other)  # each parameter gets its own stream


def test_init_statistics():
    shape = preset("1M")
    grid = Grid(Layout(), 0)
    model = Llama(shape, grid)
    initialize_parameters(model, grid, seed=1)
    full = full_parameters(model, grid)
    assert abs(full["layers.0.attention.wq.weight"].std().item() - 0.02) < 0.002
    # residual outputs are scaled by 1 / sqrt(2 * layers)
    assert abs(full["layers.0.feed_forward.w2.weight"].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert torch.equal(full["norm.weight"], torch.ones(shape.hidden))


def test_llama31_parameter_counts_match_published_sizes():
    published = {"8B": 8_030_261_248, "70B": 70_553_706_496, "405B": 405_853_388_800}
    for name, count in published.items():
        shape = preset(name)
        assert matmul_params(shape) + shape.vocab * shape.hidden == count


def test_flops_per_token_by_hand():
    # tiny: per layer q,o 64*64 each, k,v 64*32 each, MLP 3*64*192, two norms 64 -> 49,280;
    # two layers + final norm 64 + LM head 256*64 = 115,008 matmul params.
    shape = preset("tiny")
    assert matmul_params(shape) == 115_008
    assert flops_per_token(shape) == 6 * 115_008 + 12 * 2 * 64 * 64
