"""The model against independent references: a plain PyTorch Llama, published sizes, hand sums."""

from __future__ import annotations

import torch

from axon.parallel.grid import Grid
from axon.model import Llama, initialize_parameters
from axon.model import init as init_module
from axon.parallel.full_tensor import full_parameters
from axon.testing.grids import CoordinateGrid
from axon.testing.reference_model import PlainLlama
from axon.spec.flops import flops_per_token
from axon.spec.parameters import matmul_parameters
from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape, preset


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
        assert matmul_parameters(shape) + shape.vocab * shape.hidden == count


def test_flops_per_token_by_hand():
    # tiny: per layer q,o 64*64 each, k,v 64*32 each, MLP 3*64*192, two norms 64 -> 49,280;
    # two layers + final norm 64 + LM head 256*64 = 115,008 matmul params.
    shape = preset("tiny")
    assert matmul_parameters(shape) == 115_008
    assert flops_per_token(shape) == 6 * 115_008 + 12 * 2 * 64 * 64


def test_every_rank_initializes_its_slice_of_the_one_process_model(monkeypatch):
    shape = ModelShape(layers=1, hidden=12, heads=2, kv_heads=2, ffn=20, vocab=30, seq_len=8)
    one_grid = Grid(Layout(), 0)
    one = Llama(shape, one_grid)
    initialize_parameters(one, one_grid, seed=4)
    full = full_parameters(one, one_grid)
    requested = []
    original = init_module._normal_rows
    monkeypatch.setattr(init_module, "_normal_rows",
                        lambda *a, **k: requested.append(a[3]) or original(*a, **k))
    for layout in (Layout(depth=4), Layout(depth=2, row=2, col=2), Layout(depth=3, col=2)):
        for rank in range(layout.world_size):
            grid = CoordinateGrid(layout, rank)
            model = Llama(shape, grid)
            requested.clear()
            initialize_parameters(model, grid, seed=4)
            at = grid.coords
            for name, param in model.named_parameters():
                whole = full[name]
                if whole.dim() == 1:  # norm gains: split over col, not over depth
                    part = whole.numel() // layout.col
                    assert torch.equal(param, whole[at["col"] * part:(at["col"] + 1) * part]), name
                    continue
                out_axis, in_axis = model.get_submodule(name.removesuffix(".weight")).sharding.dim_axes
                rows = whole.shape[0] // getattr(layout, out_axis)
                cols = whole.shape[1] // getattr(layout, in_axis)
                block = whole[at[out_axis] * rows:(at[out_axis] + 1) * rows,
                              at[in_axis] * cols:(at[in_axis] + 1) * cols].reshape(-1)
                n = param.numel()
                padded = torch.cat([block, torch.zeros(n * layout.depth - block.numel())])
                assert torch.equal(param.detach(), padded[at["depth"] * n:(at["depth"] + 1) * n]), name
            # A rank draws only the rows its depth slice touches (+1 partial row at each end),
            # never a whole depth-sharded weight: vocab 30 over depth 4 is under 8 rows + 2.
            if layout.depth == 4:
                assert max(r.stop - r.start for r in requested) <= 30 // 4 + 2
