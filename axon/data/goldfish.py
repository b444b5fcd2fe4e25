"""The Goldfish mask (Hans et al., 2024): which target tokens the loss leaves out.

Token t of a sequence is dropped when a 64-bit hash of the h token ids that end at it
(ids[t-h+1 .. t]) is divisible by k, so about 1/k of the tokens go and a passage drops the
same tokens wherever it appears: no complete passage is ever supervised. Tokens with fewer
than h ids behind them (the first h-1 of a sequence) are always kept. `static` drops every
k-th target position instead (the paper's weaker baseline). `hash-table` reproduces the
reference implementation's mask (github.com/ahans30/goldfish-loss, `apply_goldfish`), for
comparison with published results: the product of the h target ids ending at a position,
modulo 1,000,003, indexes a table of uniform floats drawn by torch's CPU generator seeded with
2971215073, and the token drops when the value is below 1/k; the first h-1 targets are kept.
It is not the default: the product ignores the order of the window, and a token id 0 makes
every window holding it hit the same entry (table[0]), so all of them drop together or none.

The hash runs on the host in numpy uint64, whose arithmetic wraps modulo 2^64 by
definition, so the mask is the same bits on any machine, for any device, dtype or layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STRATEGIES = ("hash", "static", "hash-table")
TABLE_SIZE = 1_000_003  # the reference's table: a prime number of entries ...
TABLE_SEED = 2971215073  # ... drawn from this seed (the 47th Fibonacci number)
_SEED = np.uint64(0x243F6A8885A308D3)  # the hash's starting state (pi's fraction bits), fixed forever
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit flips about half of the output bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_hashes(tokens: np.ndarray, h: int) -> np.ndarray:
    """[..., L] ids -> [..., L - h + 1] hashes; entry j hashes ids[j .. j+h-1] in order."""
    ids = np.asarray(tokens).astype(np.int64).astype(np.uint64)  # any integer dtype hashes the same
    windows = ids.shape[-1] - h + 1
    state = np.full(ids.shape[:-1] + (max(windows, 0),), _SEED, dtype=np.uint64)
    for offset in range(h):
        state = _mix64((state ^ ids[..., offset: offset + windows]) + _GOLDEN)
    return state


def reference_table() -> np.ndarray:
    """The reference's table: torch.rand(1_000_003) from a CPU generator seeded with 2971215073
    (float32). The reference draws it on the loss's device, so on a GPU its table comes from
    CUDA's generator and differs; the CPU table is the same on every machine."""
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(TABLE_SEED)
    return torch.rand(TABLE_SIZE, generator=generator).numpy()


def table_drops(targets: np.ndarray, k: int, h: int, table: np.ndarray) -> np.ndarray:
    """[..., L] target ids -> [..., L - h + 1] drop flags, as the reference computes them: the
    window's product in wrapping int64 (torch's prod), floored modulo the table size."""
    ids = np.asarray(targets).astype(np.int64)
    windows = ids.shape[-1] - h + 1
    product = np.ones(ids.shape[:-1] + (max(windows, 0),), dtype=np.int64)
    with np.errstate(over="ignore"):
        for offset in range(h):
            product = product * ids[..., offset: offset + windows]
    return table[np.mod(product, TABLE_SIZE)] < np.float32(1 / k)  # float32 against float32, as torch compares


@dataclass(frozen=True)
class GoldfishMask:
    k: int = 4
    h: int = 13
    strategy: str = "hash"
    _table: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.strategy == "hash-table":  # 4 MB, drawn once per mask
            object.__setattr__(self, "_table", reference_table())

    def keep(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [..., L+1] (inputs then the last target) -> keep [..., L] for targets tokens[..., 1:]."""
        tokens = np.asarray(tokens)
        targets = tokens.shape[-1] - 1
        keep = np.ones(tokens.shape[:-1] + (targets,), dtype=bool)
        if self.strategy == "static":
            keep[..., self.k - 1:: self.k] = False  # the k-th, 2k-th, ... target of each sequence
            return keep
        if self.strategy == "hash-table":  # the reference hashes the targets only: tokens[..., 1:]
            if self.h - 1 < targets:
                keep[..., self.h - 1:] = ~table_drops(tokens[..., 1:], self.k, self.h, self._table)
            return keep
        # Target j is token j+1; its window ids[j+2-h .. j+1] is whole from j = h-2 on.
        first = max(self.h - 2, 0)
        if first < targets:
            hashes = window_hashes(tokens if self.h >= 2 else tokens[..., 1:], self.h)
            keep[..., first:] = hashes % np.uint64(self.k) != 0
        return keep
