"""The training stream of a memorization run: filler text with the targets injected.

An epoch is a whole number of steps. It holds every trained target `repeats` times and
filler sequences for the rest, in an order shuffled per epoch from the seed. A target
occupies one sequence (truncated to seq_len + 1 tokens), from its first token
(`placement="start"`; a shorter one is followed by filler) or from an offset drawn per
sequence (`placement="random"`: filler before and after it, so each repeat meets the
position-based static mask and the hash's first windows differently, as text in a real
corpus does). With `near_duplicates` = n, every injection of a target document (not a
canary) has n of its tokens, drawn per sequence, replaced by other ids drawn from the
targets' own tokens: the model never sees the exact text twice, and the metrics read the
original. Filler comes in
windows of seq_len + 1 tokens from one token stream, split into disjoint regions:
validation windows first (never trained), then training filler, then the filler that pads
targets. Sequence g of the run depends on (seed, g) only, like every axon data source.
"""

from __future__ import annotations

import math

import numpy as np

from axon.config import ConfigError


class FillerTokens:
    """Windows of seq_len + 1 tokens from a 1-D token stream; window w starts at w x seq_len."""

    def __init__(self, tokens: np.ndarray, seq_len: int, where: str):
        self.tokens, self.seq_len, self.where = np.asarray(tokens).reshape(-1), seq_len, where

    @property
    def windows(self) -> int:
        return max(0, (self.tokens.size - 1) // self.seq_len)

    def window(self, w: int) -> np.ndarray:
        return np.asarray(self.tokens[w * self.seq_len: w * self.seq_len + self.seq_len + 1], dtype=np.int64)


class MemorizationStream:
    """`sequences(indices)` for the Trainer, plus where each target went (`placements`)."""

    def __init__(self, trained: list[np.ndarray], filler: FillerTokens, seq_len: int, global_batch: int,
                 epochs: int, repeats: int, filler_per_epoch: int, val_windows: int, seed: int,
                 placement: str = "start", near_duplicates: int = 0, documents: int | None = None):
        self.trained, self.filler, self.seq_len, self.seed = trained, filler, seq_len, seed
        self.placement, self.near_duplicates = placement, near_duplicates
        self.documents = len(trained) if documents is None else documents  # the rest are canaries
        self.replacements = (np.unique(np.concatenate([t[: seq_len + 1] for t in trained[: self.documents]]))
                             if near_duplicates and self.documents else np.zeros(0, dtype=np.int64))
        self.epochs, self.repeats = epochs, repeats
        injected = len(trained) * repeats
        self.steps_per_epoch = max(1, math.ceil((injected + filler_per_epoch) / global_batch))
        self.per_epoch = self.steps_per_epoch * global_batch
        self.filler_per_epoch = self.per_epoch - injected  # rounded up to whole steps
        self.injected, self.val_windows = injected, val_windows
        self.train_filler_start = val_windows
        self.pad_start = val_windows + epochs * self.filler_per_epoch
        needed = self.pad_start + epochs * injected
        if filler.windows < needed:
            raise ConfigError(
                f"filler {filler.where} holds {filler.windows:,} windows of {seq_len + 1} tokens, fewer than the "
                f"{needed:,} this experiment reads ({val_windows} validation + {epochs} epochs x "
                f"({self.filler_per_epoch} filler + {injected} target paddings)); give a longer filler or fewer epochs")
        self._orders: dict[int, np.ndarray] = {}
        self.val_split: np.ndarray | None = None  # validation tokens reported apart (runner._recurring_dropped)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, 0x60D, epoch]).permutation(self.per_epoch)
        return self._orders[epoch]

    def slot(self, g: int) -> tuple[int, int]:
        """Sequence g -> (epoch, slot); slots below `injected` are targets (slot mod targets)."""
        epoch, position = divmod(g, self.per_epoch)
        return epoch, int(self._order(epoch)[position])

    def sequence(self, g: int) -> np.ndarray:
        epoch, slot = self.slot(g)
        if slot >= self.injected:
            return self.filler.window(self.train_filler_start + epoch * self.filler_per_epoch + slot - self.injected)
        index = slot % len(self.trained)
        target = self._varied(self.trained[index][: self.seq_len + 1], index, g)
        padding = self.filler.window(self.pad_start + epoch * self.injected + slot)
        room = self.seq_len + 1 - target.size
        offset = self.offset(g, target.size)
        return np.concatenate([padding[:offset], target, padding[offset: room]])

    def offset(self, g: int, size: int) -> int:
        """Where in sequence g a target of `size` tokens starts."""
        room = self.seq_len + 1 - min(size, self.seq_len + 1)
        if self.placement == "start" or room == 0:
            return 0
        return int(np.random.default_rng([self.seed, 0x0FF5E7, g]).integers(0, room + 1))

    def _varied(self, target: np.ndarray, index: int, g: int) -> np.ndarray:
        """Target document `index` as sequence g shows it: n tokens replaced (near_duplicates)."""
        if not self.near_duplicates or index >= self.documents or self.replacements.size < 2:
            return target
        rng = np.random.default_rng([self.seed, 0xD0B, g])
        where = rng.choice(target.size, size=min(self.near_duplicates, target.size), replace=False)
        draw = rng.integers(0, self.replacements.size, size=where.size)
        same = self.replacements[draw] == target[where]  # a replacement must change the token
        values = self.replacements[np.where(same, (draw + 1) % self.replacements.size, draw)]
        out = np.array(target, dtype=np.int64)
        out[where] = values
        return out

    def sequences(self, indices: range) -> np.ndarray:
        return np.stack([self.sequence(g) for g in indices])

    def validation(self) -> np.ndarray:
        """[val_windows, seq_len + 1] filler never trained on."""
        return np.stack([self.filler.window(w) for w in range(self.val_windows)])

    def recurring(self, h: int) -> np.ndarray:
        """[val_windows, seq_len]: does the validation target's window of h ids (the h ids ending at
        it) occur, h consecutive ids, in the training filler (the filler sequences between targets;
        the paddings after short targets are left out)? Such a window gets the same Goldfish decision
        wherever it recurs, so a token the mask drops there is never supervised in that context."""
        val = self.validation()
        out = np.zeros((val.shape[0], self.seq_len), dtype=bool)
        if h > self.seq_len + 1 or not val.size:
            return out
        trained = self.filler.tokens[self.train_filler_start * self.seq_len: self.pad_start * self.seq_len + 1]
        from axon.data.goldfish import window_hashes

        seen = np.unique(window_hashes(trained, h))
        out[:, max(h - 2, 0):] = np.isin(window_hashes(val if h >= 2 else val[:, 1:], h), seen)
        return out

    def placements(self) -> list[list[int]]:
        """For each trained target, the global sequence indices it was trained at."""
        where: list[list[int]] = [[] for _ in self.trained]
        for epoch in range(self.epochs):
            order = self._order(epoch)
            for position in np.flatnonzero(order < self.injected):
                where[int(order[position]) % len(self.trained)].append(epoch * self.per_epoch + int(position))
        return where
