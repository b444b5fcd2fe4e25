"""Data: every layout sees the same global batch; token files load and fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axon.config import ConfigError, build_config
from axon.data.batches import SyntheticTokens, TokenFile, shard_micro_batches, token_source
from axon.parallel.grid import Grid
from axon.spec.layout import Layout
from axon.testing.grids import CoordinateGrid


def test_shards_of_any_layout_cover_the_one_process_batch_once():
    base = {"model": {"preset": "tiny", "seq_len": 8}, "train": {"global_batch": 8, "micro_batch": 1}}
    one = build_config({**base, "train": {"global_batch": 8}})
    source = token_source(one)
    whole = shard_micro_batches(source, one, Grid(Layout(), 0), step=3, device="cpu")[0][0]
    layout = Layout(data=2, depth=2)
    config = build_config({**base, "layout": {"data": 2, "depth": 2}})
    pieces = []
    for rank in range(4):
        grid = CoordinateGrid(layout, rank)
        pieces += [ids for ids, _ in shard_micro_batches(source, config, grid, step=3, device="cpu")]
    assert torch.equal(torch.cat(pieces), whole)


def test_synthetic_stream_is_deterministic_and_follows_its_chain():
    a = SyntheticTokens(vocab=50, seq_len=20, seed=5).sequences(range(10, 14))
    b = SyntheticTokens(vocab=50, seq_len=20, seed=5).sequences(range(12, 14))
    assert np.array_equal(a[2:], b)
    source = SyntheticTokens(vocab=50, seq_len=20, seed=5)
    for row in a:
        for prev, nxt in zip(row[:-1], row[1:]):
            assert nxt in source.next_tokens[prev]


def test_token_files(tmp_path):
    tokens = np.arange(1000, dtype=np.int64) % 97
    np.save(tmp_path / "t.npy", tokens)
    source = TokenFile(str(tmp_path / "t.npy"), vocab=97, seq_len=10, tokens_per_step=40)
    assert np.array_equal(source.sequences(range(2, 3))[0], tokens[20:31])
    (tmp_path / "t.txt").write_text("hello axon " * 20)
    text = TokenFile(str(tmp_path / "t.txt"), vocab=256, seq_len=5, tokens_per_step=20)
    assert bytes(text.sequences(range(0, 1))[0].astype(np.uint8)) == b"hello "


@pytest.mark.parametrize("make, words", [
    (lambda p: np.save(p / "d.npy", np.arange(100)), ["holds 100 tokens", "fewer than one step"]),
    (lambda p: np.save(p / "d.npy", np.full(5000, 300)), ["token id 300", "model.vocab=256"]),
    (lambda p: np.save(p / "d.npy", np.full(5000, -3)), ["token id -3", "never negative"]),
    (lambda p: np.save(p / "d.npy", np.full(5000, 1.5)), ["float64 values", "must be integers"]),
])
def test_bad_token_files_name_the_problem(tmp_path, make, words):
    make(tmp_path)
    with pytest.raises(ConfigError) as err:
        TokenFile(str(tmp_path / "d.npy"), vocab=256, seq_len=64, tokens_per_step=1024)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ConfigError, match="is not a file"):
        TokenFile(str(tmp_path / "missing.npy"), vocab=256, seq_len=64, tokens_per_step=1024)


def test_a_file_of_one_sequence_is_too_short_rather_than_a_division_by_zero(tmp_path):
    """global_batch 1 with exactly seq_len + 1 tokens left no start to wrap to (a modulo by 0 mid-step)."""
    np.save(tmp_path / "d.npy", np.arange(65) % 50)
    with pytest.raises(ConfigError, match=r"holds 65 tokens, fewer than one step needs \(66 = "):
        TokenFile(str(tmp_path / "d.npy"), vocab=256, seq_len=64, tokens_per_step=64)
    np.save(tmp_path / "d.npy", np.arange(66) % 50)
    source = TokenFile(str(tmp_path / "d.npy"), vocab=256, seq_len=64, tokens_per_step=64)
    assert source.sequences(range(0, 2)).shape == (2, 65)
