"""The Goldfish loss: the mask (drop rate, determinism, passages), the masked mean against
plain PyTorch, and training with it on several layouts against the 1-process run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axon.config import ConfigError, build_config
from axon.data.goldfish import GoldfishMask, reference_table, window_hashes
from axon.parallel.grid import Grid
from axon.model import Llama, initialize_parameters
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from axon.testing.reference_model import PlainLlama
from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.testing.spawn import run_distributed


def test_drop_rate_is_one_in_k_on_random_data():
    tokens = np.random.default_rng(0).integers(0, 128_256, size=(64, 2049))
    for k in (2, 4, 8):
        keep = GoldfishMask(k, 13).keep(tokens)
        dropped = 1 - keep[:, 11:].mean()  # positions with a whole window
        # 64 x 2038 Bernoulli(1/k) draws: 5 standard deviations is < 0.01
        assert abs(dropped - 1 / k) < 0.01, (k, dropped)


def test_short_windows_are_kept_and_static_drops_every_kth():
    tokens = np.random.default_rng(1).integers(0, 1000, size=(8, 65))
    keep = GoldfishMask(2, 13).keep(tokens)
    assert keep[:, :11].all()  # targets 0..10 (tokens 1..11) have fewer than 13 ids behind them
    assert not keep[:, 11:].all()
    static = GoldfishMask(4, 13, "static").keep(tokens)
    assert [j for j in range(64) if not static[0, j]] == list(range(3, 64, 4))
    assert (static == static[0]).all()  # the same positions in every sequence


def test_same_passage_gets_the_same_mask_wherever_it_appears():
    rng = np.random.default_rng(2)
    passage = rng.integers(0, 50_000, size=200)
    h = 13
    masks = []
    for offset in (0, 37, 311):
        row = rng.integers(0, 50_000, size=600)  # different context around it each time
        row[offset: offset + passage.size] = passage
        keep = GoldfishMask(4, h).keep(row[None, :])[0]
        # target j is token j + 1: the passage's tokens h-1.. have windows inside the passage
        masks.append(keep[offset + h - 2: offset + passage.size - 1])
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    assert 0.1 < 1 - masks[0].mean() < 0.45


def test_mask_ignores_dtype_and_matches_a_direct_hash():
    tokens = np.random.default_rng(3).integers(0, 60_000, size=(4, 40))
    reference = GoldfishMask(3, 5).keep(tokens)
    for dtype in (np.int32, np.uint16, np.int64, np.uint64):
        assert np.array_equal(GoldfishMask(3, 5).keep(tokens.astype(dtype)), reference)
    # The same bits from torch tensors of either dtype (they go through numpy).
    assert np.array_equal(GoldfishMask(3, 5).keep(torch.from_numpy(tokens).int().numpy()), reference)
    # Window j of the hash covers ids j..j+h-1: hash a single window on its own and compare.
    one = window_hashes(tokens[2, 10:15][None, :], 5)[0, 0]
    assert window_hashes(tokens, 5)[2, 10] == one
    assert reference[2, 13] == (one % np.uint64(3) != 0)  # target 13 is token 14, window 10..14


# Pinned masks: token ids drawn from default_rng(18), k=4, h=13; the dropped target positions.
GOLDEN_TOKENS = np.random.default_rng(18).integers(1, 50_000, size=(2, 41))
GOLDEN_DROPPED = {
    "hash": [[14, 16, 17, 22, 30, 37, 38], [11, 15, 17, 30, 38]],
    "hash-table": [[13, 15, 16, 17, 20, 24, 25, 29, 30, 33, 37], [17, 25, 33, 35, 36, 37, 38, 39]],
}


def test_golden_masks_of_both_strategies_never_change():
    for strategy, want in GOLDEN_DROPPED.items():
        keep = GoldfishMask(4, 13, strategy).keep(GOLDEN_TOKENS)
        assert [np.flatnonzero(~row).tolist() for row in keep] == want, strategy
    table = reference_table()  # torch's CPU generator, seeded 2971215073
    assert table.shape == (1_000_003,) and table.dtype == np.float32
    assert table[[0, 1, 2, 1_000_002]].tolist() == pytest.approx([0.23368388, 0.44126403, 0.7411477, 0.83600676],
                                                                  abs=1e-7)


def test_hash_table_matches_the_reference_formula_in_torch():
    """The reference's own expression (ahans30/goldfish-loss, apply_goldfish, strategy
    hash-table) on the targets, against axon's numpy version, on ids whose products wrap."""
    tokens = np.random.default_rng(4).integers(0, 128_256, size=(16, 257))
    generator = torch.Generator()
    generator.manual_seed(2971215073)
    table = torch.rand(1_000_003, generator=generator)
    for k, h in ((4, 13), (3, 5), (2, 1)):
        targets = torch.from_numpy(tokens[:, 1:])
        dropped = table[targets.unfold(1, h, 1).prod(dim=-1) % 1_000_003] < 1 / k
        keep = GoldfishMask(k, h, "hash-table").keep(tokens)
        assert keep[:, : h - 1].all()  # the first h-1 targets are kept
        assert np.array_equal(~keep[:, h - 1:], dropped.numpy()), (k, h)
    big = np.random.default_rng(0).integers(0, 128_256, size=(64, 2049))
    assert abs(1 - GoldfishMask(4, 13, "hash-table").keep(big)[:, 12:].mean() - 0.25) < 0.01


def test_hash_table_ignores_order_and_collapses_on_id_zero():
    """Why it is not the default: a window's product is the same in any order, and an id 0 in
    the window makes every such window index table[0] (0.2337 < 1/4: all of them drop)."""
    mask = GoldfishMask(4, 3, "hash-table")
    forward, backward = np.array([[9, 5, 7, 11]]), np.array([[9, 11, 7, 5]])
    assert mask.keep(forward)[0, 2] == mask.keep(backward)[0, 2]  # windows (5, 7, 11) and (11, 7, 5)
    rows = np.random.default_rng(5).integers(1, 1000, size=(32, 20))
    rows[:, 10] = 0
    keep = mask.keep(rows)
    assert not keep[:, 9:12].any()  # targets 9-11 (tokens 10-12) have the 0 in their window
    assert GoldfishMask(4, 3, "hash").keep(rows)[:, 9:12].mean() > 0.5  # axon's hash: about 3/4 kept


def test_masked_loss_equals_hand_computed_masked_mean():
    shape = ModelShape(layers=1, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=40, seq_len=24)
    grid = Grid(Layout(), 0)
    model = Llama(shape, grid)
    initialize_parameters(model, grid, seed=5)
    plain = PlainLlama(shape)
    plain.load_state_dict(full_parameters(model, grid))
    tokens = torch.randint(0, shape.vocab, (3, shape.seq_len + 1), generator=torch.Generator().manual_seed(4))
    keep = torch.from_numpy(GoldfishMask(3, 4).keep(tokens.numpy()))
    ids, targets = tokens[:, :-1], tokens[:, 1:]

    loss = model.token_losses(ids, targets, keep).sum() / keep.sum()
    per_token = F.cross_entropy(plain(ids).reshape(-1, shape.vocab), targets.reshape(-1), reduction="none")
    want = (per_token * keep.reshape(-1)).sum() / keep.sum()
    assert abs(loss.item() - want.item()) < 1e-6 * want.item()
    loss.backward()
    want.backward()
    plain_grads = dict(plain.named_parameters())
    for name, param in model.named_parameters():
        ref = plain_grads[name].grad.reshape(-1)
        assert (param.grad - ref).norm() <= 1e-5 * ref.norm(), name


def test_goldfish_config_is_checked():
    with pytest.raises(ConfigError, match="goldfish.k must be >= 2"):
        build_config({"train": {"loss": "goldfish"}, "goldfish": {"k": 1}})
    with pytest.raises(ConfigError, match="'hash', 'static' or 'hash-table'"):
        build_config({"train": {"loss": "goldfish"}, "goldfish": {"strategy": "table"}})
    assert build_config({"train": {"loss": "goldfish"}, "goldfish": {"strategy": "hash-table"}}).goldfish.strategy \
        == "hash-table"
    with pytest.raises(ConfigError, match="train.loss must be"):
        build_config({"train": {"loss": "focal"}})


# ------------------------------------------------------------------ training on layouts

MODEL = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": 64, "seq_len": 32}


def goldfish_config(layout: Layout, micro_batch: int = 0):
    return build_config({
        "model": MODEL, "layout": {a: getattr(layout, a) for a in ("data", "depth", "row", "col")},
        "train": {"steps": 4, "global_batch": 8, "micro_batch": micro_batch, "lr": 2e-3, "seed": 3,
                  "loss": "goldfish"},
        "goldfish": {"k": 3, "h": 4}})


def _train(config, rank):
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    history = trainer.fit()
    params = full_parameters(trainer.model, grid)
    grid.destroy()
    return [(m["loss"], m["kept_fraction"]) for m in history], params


def _layouts(rank, world, cases):
    return [_train(goldfish_config(layout, micro), rank) for layout, micro in cases]


def test_goldfish_training_matches_one_process_on_every_layout():
    one, one_params = _train(goldfish_config(Layout()), 0)
    assert all(0.55 < kept < 0.8 for _, kept in one)  # about 2/3 of the targets (k=3) with whole windows
    # The loss is the mean over kept tokens: recompute step 1's from the initial model by hand.
    config = goldfish_config(Layout())
    grid = Grid(Layout(), 0)
    fresh = Trainer(config, grid, torch.device("cpu"))
    tokens = fresh.source.sequences(range(0, 8))
    keep = GoldfishMask(3, 4).keep(tokens)
    with torch.no_grad():
        per_token = fresh.model.token_losses(torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:]))
    assert abs(one[0][0] - float(per_token[torch.from_numpy(keep)].mean())) < 1e-5
    assert abs(one[0][1] - keep.mean()) < 1e-12

    cases = [(Layout(data=2, depth=2), 1), (Layout(depth=2, row=2), 0), (Layout(data=2, col=2), 2)]
    results = run_distributed(4, _layouts, cases)[0]
    for (layout, _), (history, params) in zip(cases, results):
        for (loss, kept), (want, want_kept) in zip(history, one):
            assert abs(loss - want) < 1e-5 * want, layout
            assert kept == pytest.approx(want_kept, abs=1e-12), layout
        for name, tensor in one_params.items():
            assert (params[name] - tensor).norm() <= 1e-5 * tensor.norm(), (layout, name)
