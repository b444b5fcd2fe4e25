"""The data order (file order by default, data.shuffle with data.seed), the held-out validation
windows and the validation loss, in-process on a small token file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axon import checkpoint
from axon.config import ConfigError, build_config
from axon.data.batches import TokenFile
from axon.parallel.full_tensor import full_parameters
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.testing.reference_model import PlainLlama

SEQ, VOCAB = 16, 136
TRAIN_TOKENS, HELD = 641, 4  # 40 training windows of 16 + 1 tokens; 4 validation windows take 4 x 16 + 1
MODEL = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": VOCAB, "seq_len": SEQ}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.npy"
    np.save(path, np.random.default_rng(0).integers(0, VOCAB, TRAIN_TOKENS + HELD * SEQ + 1))
    return path


def test_file_order_is_unchanged_by_default(token_file):
    """Without data.shuffle sequence g starts at (g x seq_len) mod (tokens - seq_len - 1), as before."""
    source = TokenFile(str(token_file), VOCAB, SEQ, 8 * SEQ)
    span = 706 - SEQ - 1  # 689
    assert source.starts(range(0, 3)) == [0, 16, 32]
    assert source.starts(range(43, 46)) == [688, 704 % span, 720 % span] == [688, 15, 31]


def test_shuffle_visits_every_window_once_per_epoch_in_a_new_order(token_file):
    source = TokenFile(str(token_file), VOCAB, SEQ, 8 * SEQ, shuffle=True, seed=7, validation_sequences=HELD)
    assert (source.train_tokens, source.windows) == (TRAIN_TOKENS, 40)
    epoch0, epoch1 = source.starts(range(0, 40)), source.starts(range(40, 80))
    assert sorted(epoch0) == sorted(epoch1) == [16 * k for k in range(40)]  # each window once per epoch
    assert epoch0 != epoch1 and epoch0 != sorted(epoch0)  # shuffled, and anew each epoch
    again = TokenFile(str(token_file), VOCAB, SEQ, 8 * SEQ, shuffle=True, seed=7, validation_sequences=HELD)
    assert again.starts(range(45, 50)) == epoch1[5:10]  # a function of (seed, g): resumable anywhere
    other = TokenFile(str(token_file), VOCAB, SEQ, 8 * SEQ, shuffle=True, seed=8, validation_sequences=HELD)
    assert other.starts(range(0, 40)) != epoch0
    tokens = np.load(token_file)
    assert np.array_equal(source.sequences(range(3, 4))[0], tokens[epoch0[3]: epoch0[3] + SEQ + 1])
    # The validation windows are the file's last 4 x 16 + 1 tokens, and training never reads them.
    assert np.array_equal(source.validation(), np.stack([tokens[641 + 16 * k: 641 + 16 * k + 17] for k in range(4)]))
    assert max(source.starts(range(0, 400))) + SEQ + 1 <= TRAIN_TOKENS
    with pytest.raises(ConfigError) as err:  # held out too much: one sentence with the numbers
        TokenFile(str(token_file), VOCAB, SEQ, 8 * SEQ, validation_sequences=40)
    assert str(err.value) == (f"data.source {str(token_file)!r} holds 706 tokens (65 after holding out 641 "
                              "for data.validation_sequences=40), fewer than one step needs (129 = the larger of "
                              "train.global_batch x model.seq_len + 1 and model.seq_len + 2)")
    assert source.describe(6, 8) == (
        f"axon: data {token_file}: 706 tokens, 40 training sequences of 16 per epoch, the last 4 held out for "
        "validation; read shuffled each epoch (data.seed 7); 6 steps x 8 sequences = 1.2 epochs")


def _config(token_file, out_dir, steps):
    return build_config({"model": MODEL, "out_dir": str(out_dir),
                         "train": {"steps": steps, "global_batch": 8, "lr": 1e-3, "seed": 5, "eval_every": 2,
                                   "schedule": "constant"},  # the same rate whether 3 or 5 steps are planned
                         "data": {"source": str(token_file), "shuffle": True, "seed": 7,
                                  "validation_sequences": HELD}})


def test_a_shuffled_run_resumes_in_the_uninterrupted_order_and_logs_validation_loss(token_file, tmp_path):
    """5 steps of 8 sequences cross an epoch of 40; stopped after step 3 and resumed, the losses are
    bitwise the uninterrupted run's. val_loss at steps 2, 4 and the last is PlainLlama's loss on the
    held-out windows with the trained weights."""
    config = _config(token_file, tmp_path / "straight", 5)
    trainer = Trainer(config, Grid(config.layout, 0), torch.device("cpu"))
    straight = trainer.fit()
    assert [m["step"] for m in straight if "val_loss" in m] == [2, 4, 5]

    reference = PlainLlama(config.model).double()
    reference.load_state_dict({name: p.double() for name, p in full_parameters(trainer.model, trainer.grid).items()})
    windows = torch.as_tensor(trainer.source.validation())
    with torch.no_grad():
        expected = reference.loss(windows[:, :-1], windows[:, 1:]).item()
    assert straight[-1]["val_loss"] == pytest.approx(expected, rel=1e-5)

    first = _config(token_file, tmp_path / "resumed", 3)
    interrupted = Trainer(first, Grid(first.layout, 0), torch.device("cpu"))
    losses = [m["loss"] for m in interrupted.fit()]
    path = checkpoint.save(interrupted, 3, keep=2)
    second = _config(token_file, tmp_path / "resumed", 5)
    resumed = Trainer(second, Grid(second.layout, 0), torch.device("cpu"))
    assert resumed.resume_from(checkpoint.CheckpointReader(path)) is None  # same data identity: no warning
    rest = resumed.fit()
    assert losses + [m["loss"] for m in rest] == [m["loss"] for m in straight]  # bitwise
    assert [m["val_loss"] for m in rest if "val_loss" in m] == [m["val_loss"] for m in straight[3:] if "val_loss" in m]
