"""Token streams and how a step's global batch is split across data x depth shards.

Global sequence g of the run (g = step * global_batch + i) is the same tokens on every
layout; shard k = data * depth_size + depth takes a contiguous run of the step's
sequences and cuts it into micro-batches. Nothing is downloaded: the default stream
is generated, and files are memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from axon.config import ConfigError, RunConfig, micro_batch_plan
from axon.data.token_file import has_magic, open_token_file

if TYPE_CHECKING:  # torch is imported where it is used: the input checks run without it
    import torch


class SyntheticTokens:
    """A random first-order Markov chain: each token has a few likely successors, so the
    stream has structure a model can learn (best loss ~ ln(successors)) at no download cost."""

    def __init__(self, vocab: int, seq_len: int, seed: int, successors: int = 4):
        self.seq_len, self.seed = seq_len, seed
        rng = np.random.default_rng([seed, 0x5EED])
        self.next_tokens = rng.integers(0, vocab, size=(vocab, successors))
        self.vocab = vocab

    def sequences(self, indices: range) -> np.ndarray:
        """[len(indices), seq_len + 1] tokens; sequence g depends on (seed, g) only."""
        n, length = len(indices), self.seq_len + 1
        starts = np.empty(n, dtype=np.int64)
        choices = np.empty((n, length), dtype=np.int64)
        for row, g in enumerate(indices):
            rng = np.random.default_rng([self.seed, g])
            starts[row] = rng.integers(0, self.vocab)
            choices[row] = rng.integers(0, self.next_tokens.shape[1], size=length)
        tokens = np.empty((n, length), dtype=np.int64)
        tokens[:, 0] = starts
        for t in range(1, length):
            tokens[:, t] = self.next_tokens[tokens[:, t - 1], choices[:, t]]
        return tokens


class TokenFile:
    """Tokens from a file: an axon token file (.tok, or any file starting with its magic; see
    axon/data/token_file.py), .npy (integer array), .bin (raw uint16), or .txt (UTF-8 bytes as ids).

    Sequence g is the seq_len + 1 tokens at (g x seq_len) mod (tokens - seq_len - 1).
    """

    def __init__(self, path: str, vocab: int, seq_len: int, tokens_per_step: int):
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"data.source {path!r} is not a file (use 'synthetic' or a .tok/.npy/.bin/.txt path)")
        self.path, self.file_vocab = path, None
        if file.suffix == ".tok" or has_magic(file):
            view = open_token_file(file)
            if view.vocab > vocab:
                raise ConfigError(f"data.source {path!r} was tokenized for vocab {view.vocab} "
                                  f"({view.tokenizer}), more than model.vocab={vocab}")
            # Its ids are promised below the header's vocab; sequences() checks what it serves
            # rather than reading a possibly huge file on every rank here.
            self.tokens, self.file_vocab = view.tokens, view.vocab
        elif file.suffix == ".npy":
            self.tokens = np.load(file, mmap_mode="r")
            if not np.issubdtype(self.tokens.dtype, np.integer):
                raise ConfigError(f"data.source {path!r} holds {self.tokens.dtype} values; token ids must be integers")
        elif file.suffix == ".bin":
            self.tokens = np.memmap(file, dtype=np.uint16, mode="r")
        elif file.suffix == ".txt":
            self.tokens = np.frombuffer(file.read_bytes(), dtype=np.uint8)
        else:
            raise ConfigError(f"data.source {path!r}: unknown suffix {file.suffix!r}; use .tok, .npy, .bin or .txt")
        self.tokens = self.tokens.reshape(-1)
        self.seq_len = seq_len
        # Sequences start at (g x seq_len) mod (tokens - seq_len - 1): at least one start besides 0.
        needed = max(tokens_per_step + 1, seq_len + 2)
        if self.tokens.size < needed:
            raise ConfigError(
                f"data.source {path!r} holds {self.tokens.size} tokens, fewer than one step needs "
                f"({needed} = the larger of train.global_batch x model.seq_len + 1 and model.seq_len + 2)")
        if self.file_vocab is None:
            top = int(self.tokens.max())
            if top >= vocab:
                raise ConfigError(f"data.source {path!r} contains token id {top} but model.vocab={vocab}")
            bottom = int(self.tokens.min())
            if bottom < 0:
                raise ConfigError(f"data.source {path!r} contains token id {bottom}; token ids are never negative")

    def sequences(self, indices: range) -> np.ndarray:
        length, span = self.seq_len + 1, self.tokens.size - self.seq_len - 1
        rows = [np.asarray(self.tokens[s: s + length]) for s in ((g * self.seq_len) % span for g in indices)]
        batch = np.stack(rows).astype(np.int64)
        if self.file_vocab is not None and batch.size and int(batch.max()) >= self.file_vocab:
            raise ConfigError(f"data.source {self.path!r} contains token id {int(batch.max())}, not below "
                              f"its header's vocab {self.file_vocab} (check it: python -m axon data verify)")
        return batch


def token_source(config: RunConfig):
    shape, train = config.model, config.train
    if config.data.source == "synthetic":
        return SyntheticTokens(shape.vocab, shape.seq_len, train.seed)
    return TokenFile(config.data.source, shape.vocab, shape.seq_len, train.global_batch * shape.seq_len)


def host_micro_batches(source, config: RunConfig, grid, first_sequence: int) -> list[np.ndarray]:
    """This rank's micro-batches of the step whose global batch starts at sequence
    `first_sequence`, as host arrays [micro, seq_len + 1] (inputs and targets overlap by all but one)."""
    micro, count = micro_batch_plan(config)
    shard = grid.coord("data") * grid.size("depth") + grid.coord("depth")
    first = first_sequence + shard * micro * count
    return [source.sequences(range(first + m * micro, first + (m + 1) * micro)) for m in range(count)]


def to_device(arrays: list[np.ndarray], device, pairs: bool = True) -> list:
    """Each host array on `device`, as (inputs, targets) = (array[:, :-1], array[:, 1:]) with
    `pairs`, else whole; on a GPU through pinned memory, copied without blocking the host
    (the copy is queued ahead of the step's kernels)."""
    import torch  # lazily: the rest of this module runs in the torch-free input checks

    device = torch.device(device)
    tensors = []
    for array in arrays:
        tensor = torch.from_numpy(array)
        if device.type == "cuda":
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        else:
            tensor = tensor.to(device)
        tensors.append((tensor[:, :-1], tensor[:, 1:]) if pairs else tensor)
    return tensors


def shard_micro_batches(source, config: RunConfig, grid, step: int, device,
                        first_sequence: int | None = None) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """This rank's micro-batches of `step` as (inputs, targets), each [micro, seq_len].

    The step's global batch starts at sequence `first_sequence` (default step x global_batch;
    a resumed run passes where the checkpoint left off, which survives a change of batch).
    """
    if first_sequence is None:
        first_sequence = step * config.train.global_batch
    return to_device(host_micro_batches(source, config, grid, first_sequence), device)
