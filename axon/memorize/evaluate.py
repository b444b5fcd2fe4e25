"""Memorization metrics on any layout: the sequences are split over data x depth shards,
each shard's rows run through the model in batches, and the per-sequence results are
summed back over data and depth so every rank ends with all of them.

* exact match: greedy decoding from a p-token prefix reproduces the next n tokens exactly.
  Greedy reproduces the suffix iff the argmax at every suffix position of one teacher-forced
  pass equals the true next token, so one batched forward decides it.
* token accuracy: the fraction of suffix positions where that argmax is right.
* Rouge-L (the rouge-score package, over token ids) between the greedy generation and the
  true suffix. Generation equals the suffix up to the first wrong argmax, so only the
  documents that miss are generated, from the earliest miss on.
* exposure (Carlini et al., 2019): log2 |R| - log2 rank, with R the space of secrets and the
  rank estimated from `samples` random secrets: rank = |R| x (1 + #better) / (samples + 1),
  so exposure = log2(samples + 1) - log2(1 + #better), at most log2(samples + 1) bits; a
  secret never trained scores about 1.4 bits on average.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from axon.parallel.comm import all_reduce


class ShardedEval:
    """Runs batches of sequences on this rank's data x depth shard and gathers results."""

    def __init__(self, model, grid, device, batch: int):
        self.model, self.grid, self.device, self.batch = model, grid, device, batch
        self.shards = grid.size("data") * grid.size("depth")
        self.shard = grid.coord("data") * grid.size("depth") + grid.coord("depth")

    def _rows(self, n: int) -> np.ndarray:
        """This shard's row indices, padded (with row 0) to the same count on every shard, so
        every rank runs the same number of forwards."""
        per_shard = max(1, math.ceil(n / self.shards))
        rows = np.arange(self.shard * per_shard, (self.shard + 1) * per_shard)
        return np.where(rows < n, rows, 0), rows < n

    def map(self, fn, tokens: np.ndarray, width: int, dtype=torch.float64) -> torch.Tensor:
        """fn(batch of token rows [b, L] on device) -> [b, width] for every row; returns [n, width]."""
        n = len(tokens)
        rows, real = self._rows(n)
        out = torch.zeros(n, width, dtype=dtype, device=self.device)
        with torch.no_grad():
            for start in range(0, len(rows), self.batch):
                take, keep = rows[start: start + self.batch], real[start: start + self.batch]
                batch = torch.as_tensor(np.asarray(tokens)[take], dtype=torch.long, device=self.device)
                result = fn(batch).to(dtype)
                out[torch.as_tensor(take[keep], device=self.device)] = result[torch.as_tensor(keep, device=self.device)]
        return all_reduce(out, self.grid.axis("data+depth"))  # each row was written by one shard only

    def greedy(self, tokens: np.ndarray) -> np.ndarray:
        """[n, L] -> [n, L - 1]: the argmax next token after each of the first L - 1 tokens."""
        return self.map(lambda b: self.model.greedy_tokens(b[:, :-1]), tokens, tokens.shape[1] - 1,
                        torch.int64).cpu().numpy()

    def token_losses(self, tokens: np.ndarray) -> np.ndarray:
        """[n, L] -> [n, L - 1] cross-entropy of each next token (nats)."""
        return self.map(lambda b: self.model.token_losses(b[:, :-1], b[:, 1:]), tokens,
                        tokens.shape[1] - 1).cpu().numpy()

    def generate(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        """Greedy continuation: [n, c] -> [n, c + steps]."""
        def run(batch):
            for _ in range(steps):
                batch = torch.cat([batch, self.model.greedy_tokens(batch)[:, -1:]], dim=1)
            return batch
        return self.map(run, contexts, contexts.shape[1] + steps, torch.int64).cpu().numpy()


def rouge_l(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rouge-L F-measure per row, over token ids written as words."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    words = lambda row: " ".join(str(int(t)) for t in row)
    return np.array([scorer.score(words(ref), words(gen))["rougeL"].fmeasure
                     for gen, ref in zip(generated, reference)])


def memorization(evaluator: ShardedEval, documents: list[np.ndarray], prefix: int, suffix: int) -> dict:
    """Per-document exact match, token accuracy and Rouge-L of the `suffix` tokens after `prefix`."""
    if not documents:
        return {"exact_match": np.zeros(0), "token_acc": np.zeros(0), "rougeL": np.zeros(0)}
    tokens = np.stack([d[: prefix + suffix] for d in documents]).astype(np.int64)
    truth = tokens[:, prefix:]
    hits = evaluator.greedy(tokens)[:, prefix - 1:] == truth
    exact = hits.all(axis=1)
    first_miss = np.where(exact, suffix, np.argmax(~hits, axis=1))
    generated = truth.copy()
    missed = np.flatnonzero(~exact)
    if missed.size:
        start = int(first_miss[missed].min())  # every missed document agrees with the truth up to here
        out = evaluator.generate(tokens[missed, : prefix + start], suffix - start)
        generated[missed] = out[:, prefix:]
    return {"exact_match": exact.astype(float), "token_acc": hits.mean(axis=1), "rougeL": rouge_l(generated, truth)}


def exposure(evaluator: ShardedEval, canary, alphabet: np.ndarray, samples: int, seed: int) -> float:
    """Exposure in bits of one canary's secret, from `samples` random secrets of its length."""
    rng = np.random.default_rng([seed, 0xCA4A, len(canary.prefix)] + [int(t) for t in canary.secret])
    candidates = alphabet[rng.integers(0, alphabet.size, size=(samples, canary.secret.size))]
    secrets = np.concatenate([canary.secret[None, :], candidates])
    tokens = np.concatenate([np.repeat(canary.prefix[None, :], samples + 1, axis=0), secrets], axis=1)
    scores = evaluator.token_losses(tokens)[:, canary.prefix.size - 1:].sum(axis=1)  # -log p(secret | prefix)
    better = int((scores[1:] < scores[0]).sum())
    return math.log2(samples + 1) - math.log2(1 + better)


def validation_loss(evaluator: ShardedEval, windows: np.ndarray) -> float:
    """Mean next-token loss (nats) over held-out filler windows."""
    return float(evaluator.token_losses(windows).mean()) if len(windows) else float("nan")


def reproduced(evaluator: ShardedEval, rows: list[np.ndarray], given: list[int]) -> np.ndarray:
    """Per row: does greedy decoding from its first given[i] tokens reproduce the rest of it?
    Rows of one length and prefix share one forward (every rank holds every row, so every
    rank runs the same groups)."""
    out = np.zeros(len(rows), dtype=bool)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (row, p) in enumerate(zip(rows, given)):
        groups.setdefault((row.size, p), []).append(i)
    for (_, p), members in sorted(groups.items()):
        tokens = np.stack([rows[i] for i in members]).astype(np.int64)
        out[members] = (evaluator.greedy(tokens)[:, p - 1:] == tokens[:, p:]).all(axis=1)
    return out


def extraction(evaluator: ShardedEval, documents: list[np.ndarray], prefixes, suffix: int, tail: int,
               windows: int) -> dict[str, np.ndarray]:
    """Per document, for each prefix length p: the share of its windows whose `suffix` tokens
    greedy decoding reproduces from the p tokens before them alone (windows start at 0, suffix,
    2 x suffix, ..., at most `windows` of them, inside the document); and with `tail` > 0 whether
    all but the document's last `tail` tokens bring those back (the reference's extraction).
    NaN where the document is too short for that prompt. Keys: p8, p16, ..., tail50."""
    keys = [f"p{p}" for p in prefixes] + ([f"tail{tail}"] if tail else [])
    rows, given, owner = [], [], []
    for d, doc in enumerate(documents):
        doc = np.asarray(doc, dtype=np.int64)
        for key, p in zip(keys, list(prefixes)):
            for start in range(0, suffix * windows, suffix):
                if start + p + suffix <= doc.size:
                    rows.append(doc[start: start + p + suffix])
                    given.append(p)
                    owner.append((d, key))
        if tail and doc.size > tail:
            rows.append(doc)
            given.append(doc.size - tail)
            owner.append((d, keys[-1]))
    hits = reproduced(evaluator, rows, given)
    sums = {key: np.zeros(len(documents)) for key in keys}
    counts = {key: np.zeros(len(documents)) for key in keys}
    for (d, key), hit in zip(owner, hits):
        sums[key][d] += hit
        counts[key][d] += 1
    with np.errstate(invalid="ignore"):
        return {key: np.where(counts[key] > 0, sums[key] / np.maximum(counts[key], 1), np.nan) for key in keys}


def canary_extraction(evaluator: ShardedEval, canaries) -> np.ndarray:
    """Per canary: does greedy decoding from its prefix give its secret exactly?"""
    rows = [np.concatenate([c.prefix, c.secret]) for c in canaries]
    return reproduced(evaluator, rows, [c.prefix.size for c in canaries]).astype(float)


def document_losses(evaluator: ShardedEval, documents: list[np.ndarray]) -> np.ndarray:
    """Per document, the mean next-token loss (nats) over the whole of it (grouped by length)."""
    out = np.zeros(len(documents))
    groups: dict[int, list[int]] = {}
    for i, doc in enumerate(documents):
        groups.setdefault(len(doc), []).append(i)
    for _, members in sorted(groups.items()):
        out[members] = evaluator.token_losses(np.stack([documents[i] for i in members]).astype(np.int64)).mean(axis=1)
    return out


def zlib_length(text: str) -> int:
    """Bytes of the text compressed by zlib (level 9): the membership test's yardstick of how
    predictable the text is without any model (Carlini et al., 2021)."""
    import zlib

    return len(zlib.compress(text.encode("utf-8"), 9))
