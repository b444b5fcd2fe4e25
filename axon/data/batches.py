"""Token streams and how a step's global batch is split across data x depth shards.

Global sequence g of the run (g = step * global_batch + i) is the same tokens on every
layout; shard k = data * depth_size + depth takes a contiguous run of the step's
sequences and cuts it into micro-batches. Nothing is downloaded: the default stream
is generated, and files are memory-mapped.

Which tokens sequence g is depends on g alone (and the config), never on what ran before:
a run resumed at sequence g reads what the uninterrupted run read there, shuffled or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from axon.config import ConfigError, RunConfig, micro_batch_plan
from axon.data.token_file import has_magic, open_token_file

if TYPE_CHECKING:  # torch is imported where it is used: the input checks run without it
    import torch


# The synthetic stream's validation sequences: indices no run reaches (2^40 sequences).
SYNTHETIC_VALIDATION_FIRST = 2**40


class SyntheticTokens:
    """A random first-order Markov chain: each token has a few likely successors, so the
    stream has structure a model can learn (best loss ~ ln(successors)) at no download cost."""

    def __init__(self, vocab: int, seq_len: int, seed: int, successors: int = 4, validation_sequences: int = 0):
        self.seq_len, self.seed, self.validation_sequences = seq_len, seed, validation_sequences
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

    def validation(self) -> np.ndarray:
        """[validation_sequences, seq_len + 1]: sequences of the same chain no training step reads."""
        first = SYNTHETIC_VALIDATION_FIRST
        return self.sequences(range(first, first + self.validation_sequences))

    def describe(self, steps: int, global_batch: int) -> str:
        held = f"; {self.validation_sequences} more held out for validation" if self.validation_sequences else ""
        return (f"axon: data synthetic (data.source: synthetic): a generated Markov chain (train.seed "
                f"{self.seed}), a fresh sequence every time{held}")


class TokenFile:
    """Tokens from a file: an axon token file (.tok, or any file starting with its magic; see
    axon/data/token_file.py), .npy (integer array), .bin (raw uint16), or .txt (UTF-8 bytes as ids).

    The last `validation_sequences` x seq_len + 1 tokens are held out (validation windows of
    seq_len + 1 tokens, one shared between neighbours); training reads the rest. In file order
    (the default) sequence g is the seq_len + 1 tokens at (g x seq_len) mod (tokens - seq_len - 1).
    With `shuffle`, the training tokens are cut into windows (window k starts at k x seq_len) and
    epoch e = g // windows visits them in the order of a permutation drawn from (seed, e): each
    window once per epoch, a new order each epoch, the same order for every layout and resume.
    """

    def __init__(self, path: str, vocab: int, seq_len: int, tokens_per_step: int, shuffle: bool = False,
                 seed: int = 0, validation_sequences: int = 0):
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
        self.seq_len, self.shuffle, self.seed = seq_len, shuffle, seed
        self.validation_sequences = validation_sequences
        held_out = validation_sequences * seq_len + 1 if validation_sequences else 0
        self.train_tokens = self.tokens.size - held_out
        # Sequences start at (g x seq_len) mod (tokens - seq_len - 1): at least one start besides 0.
        needed = max(tokens_per_step + 1, seq_len + 2)
        if self.train_tokens < needed:
            held = (f" ({self.train_tokens} after holding out {held_out} for "
                    f"data.validation_sequences={validation_sequences})" if held_out else "")
            raise ConfigError(
                f"data.source {path!r} holds {self.tokens.size} tokens{held}, fewer than one step needs "
                f"({needed} = the larger of train.global_batch x model.seq_len + 1 and model.seq_len + 2)")
        # Training windows per pass: window k is the seq_len + 1 tokens at k x seq_len.
        self.windows = (self.train_tokens - 1) // seq_len
        self._order = (None, None)  # (epoch, its permutation): one epoch's order kept at a time
        if self.file_vocab is None:
            top = int(self.tokens.max())
            if top >= vocab:
                raise ConfigError(f"data.source {path!r} contains token id {top} but model.vocab={vocab}")
            bottom = int(self.tokens.min())
            if bottom < 0:
                raise ConfigError(f"data.source {path!r} contains token id {bottom}; token ids are never negative")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The windows in the order epoch `epoch` reads them (shuffle only): a permutation drawn from
        (data.seed, epoch), 4 bytes a window while files hold under 2^31 windows."""
        if self._order[0] != epoch:
            dtype = np.int32 if self.windows < 2**31 else np.int64
            order = np.random.default_rng([self.seed, epoch]).permutation(np.arange(self.windows, dtype=dtype))
            self._order = (epoch, order)
        return self._order[1]

    def starts(self, indices: range) -> list[int]:
        """Where in the file each of the sequences `indices` starts."""
        if not self.shuffle:
            span = self.train_tokens - self.seq_len - 1
            return [(g * self.seq_len) % span for g in indices]
        return [int(self.epoch_order(g // self.windows)[g % self.windows]) * self.seq_len for g in indices]

    def sequences(self, indices: range) -> np.ndarray:
        length = self.seq_len + 1
        return self._checked(np.stack([np.asarray(self.tokens[s: s + length]) for s in self.starts(indices)]))

    def validation(self) -> np.ndarray:
        """[validation_sequences, seq_len + 1]: the held-out windows at the file's end."""
        first, length = self.train_tokens, self.seq_len + 1
        rows = [np.asarray(self.tokens[first + k * self.seq_len: first + k * self.seq_len + length])
                for k in range(self.validation_sequences)]
        return self._checked(np.stack(rows)) if rows else np.zeros((0, length), dtype=np.int64)

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.int64)
        if self.file_vocab is not None and batch.size and int(batch.max()) >= self.file_vocab:
            raise ConfigError(f"data.source {self.path!r} contains token id {int(batch.max())}, not below "
                              f"its header's vocab {self.file_vocab} (check it: python -m axon data verify)")
        return batch

    def describe(self, steps: int, global_batch: int) -> str:
        """The banner's data line: the file, its tokens, the order, and how many passes the run makes."""
        order = f"shuffled each epoch (data.seed {self.seed})" if self.shuffle else "in file order (data.shuffle false)"
        held = (f", the last {self.validation_sequences} held out for validation" if self.validation_sequences else "")
        epochs = steps * global_batch / self.windows
        return (f"axon: data {self.path}: {self.tokens.size:,} tokens, {self.windows:,} training sequences of "
                f"{self.seq_len} per epoch{held}; read {order}; {steps} steps x {global_batch} sequences "
                f"= {epochs:.3g} epochs")


def token_source(config: RunConfig):
    """The run's tokens: a file, or the synthetic stream for "synthetic" (and for an unset
    data.source in-process: `axon train` refuses that first, axon.config.check_data_source)."""
    shape, train, data = config.model, config.train, config.data
    if data.source in ("synthetic", ""):
        return SyntheticTokens(shape.vocab, shape.seq_len, train.seed, validation_sequences=data.validation_sequences)
    return TokenFile(data.source, shape.vocab, shape.seq_len, train.global_batch * shape.seq_len, shuffle=data.shuffle,
                     seed=data.seed, validation_sequences=data.validation_sequences)


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
