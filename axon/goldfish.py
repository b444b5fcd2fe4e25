"""The Goldfish mask (Hans et al., 2024): which target tokens the loss leaves out.

Token t of a sequence is dropped when a 64-bit hash of the h token ids that end at it
(ids[t-h+1 .. t]) is divisible by k, so about 1/k of the tokens go and a passage drops the
same tokens wherever it appears: no complete passage is ever supervised. Tokens with fewer
than h ids behind them (the first h-1 of a sequence) are always kept. `static` drops every
k-th target position instead (the paper's weaker baseline).

The hash runs on the host in numpy uint64, whose arithmetic wraps modulo 2^64 by
definition, so the mask is the same bits on any machine, for any device, dtype or layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("hash", "static")
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


@dataclass(frozen=True)
class GoldfishMask:
    k: int = 4
    h: int = 13
    strategy: str = "hash"

    def keep(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [..., L+1] (inputs then the last target) -> keep [..., L] for targets tokens[..., 1:]."""
        tokens = np.asarray(tokens)
        targets = tokens.shape[-1] - 1
        keep = np.ones(tokens.shape[:-1] + (targets,), dtype=bool)
        if self.strategy == "static":
            keep[..., self.k - 1:: self.k] = False  # the k-th, 2k-th, ... target of each sequence
            return keep
        # Target j is token j+1; its window ids[j+2-h .. j+1] is whole from j = h-2 on.
        first = max(self.h - 2, 0)
        if first < targets:
            hashes = window_hashes(tokens if self.h >= 2 else tokens[..., 1:], self.h)
            keep[..., first:] = hashes % np.uint64(self.k) != 0
        return keep
