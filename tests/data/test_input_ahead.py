"""The next step's input, assembled on a background thread (axon.data.input_ahead): the same
tensors as assembling it in the step, the wait reported, a mistake raised at its own step."""

from __future__ import annotations

import pytest
import torch

from axon.config import ConfigError, build_config
from axon.data.batches import shard_micro_batches, token_source
from axon.data.goldfish import GoldfishMask
from axon.data.input_ahead import InputAhead
from axon.spec.layout import Layout
from axon.testing.grids import CoordinateGrid

CONFIG = {"model": {"preset": "tiny", "seq_len": 16}, "layout": {"data": 2, "depth": 2},
          "train": {"steps": 4, "global_batch": 16, "micro_batch": 2}}


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


def test_prepared_and_assembled_in_the_step_are_the_same_tensors():
    config = build_config(CONFIG)
    source = token_source(config)
    for rank in range(4):  # coordinates only: no process group needed
        grid = CoordinateGrid(config.layout, rank)
        ahead = InputAhead(source, config, grid, "cpu")
        ahead.prepare(32)
        batches, keeps, kept, waited = ahead.take(32)
        assert _equal(batches, shard_micro_batches(source, config, grid, 2, "cpu"))
        assert waited >= 0.0 and len(batches) == 2 and batches[0][0].shape == (2, 16)
        assert keeps == [None, None] and kept == 2 * 2 * 16  # no mask: every target of 2 micro-batches of 2
        # Nothing, or another position, prepared (the first step, a resume): assembled in place, the same.
        other = ahead.take(48).batches
        assert _equal(other, shard_micro_batches(source, config, grid, 3, "cpu"))
        ahead.prepare(64)
        moved = ahead.take(16).batches
        assert _equal(moved, shard_micro_batches(source, config, grid, 1, "cpu"))


def test_a_mistake_found_ahead_is_raised_at_its_own_step():
    config = build_config({**CONFIG, "layout": {}})

    class BadAtSequence32:
        def sequences(self, indices):
            if 32 in indices:
                raise ConfigError("data.source 'x' contains token id 999, not below its header's vocab 256")
            return token_source(config).sequences(indices)

    ahead = InputAhead(BadAtSequence32(), config, CoordinateGrid(Layout(), 0), "cpu")
    ahead.prepare(32)  # the failure stays in the background until its step takes the input
    with pytest.raises(ConfigError, match="token id 999"):
        ahead.take(32)


def test_goldfish_masks_are_hashed_ahead_from_the_same_tokens():
    config = build_config(CONFIG)
    source, grid = token_source(config), CoordinateGrid(config.layout, 3)
    goldfish = GoldfishMask(k=4, h=3, strategy="hash")
    ahead = InputAhead(source, config, grid, "cpu", goldfish.keep)
    ahead.prepare(16)
    batches, keeps, kept, _ = ahead.take(16)
    for (ids, targets), keep in zip(batches, keeps):
        tokens = torch.cat([ids[:, :1], targets], dim=1).numpy()
        assert torch.equal(keep, torch.from_numpy(goldfish.keep(tokens)))
    assert kept == sum(int(k.sum()) for k in keeps) and 0 < kept < 2 * 2 * 16
