"""ACR, the Adversarial Compression Ratio (Schwarzschild, Feng, Maini, Lipton and Kolter,
"Rethinking LLM Memorization through the Lens of Adversarial Compression", 2024,
arXiv:2404.15146): a string is memorized when a prompt shorter than it makes the model
produce it exactly.

For each document the target is its `suffix` tokens after `prefix` (what exact match reads).
A greedy coordinate-gradient search (GCG, Zou et al., 2023) looks for a prompt of L tokens
that makes greedy decoding reproduce the target: at each iteration the gradient of the
target's loss with respect to the prompt's one-hot tokens (through the embedding) ranks, per
position, the `top_k` tokens that lower it most; `candidates` prompts, each the current one
with one position swapped to one of those tokens, are scored by one forward, and the best
becomes the current prompt; at most `iterations` iterations per length. Each length is
searched from two starts at once (`init: both`): the document's own last L prefix tokens and
L random tokens; either one reproducing the target is a success. The length is bisected
between the longest known to fail (0 at first) and the shortest known to succeed (`suffix`
at first, the target's own length, which only an ACR of 1 needs), so every length below the
target's can be the answer, in about log2(suffix) searches. ACR = target tokens / tokens of
the shortest prompt found, above 1 by construction; a document with none found scores 0 (the
ACR paper's statistic is the share of documents above 1 and the mean ACR over those). The
search is bounded, so ACR is a lower bound: a longer search can only find shorter prompts.

On any layout with layout.pipe = 1: the documents are split over data x depth shards like the
other metrics (every shard runs the same number of forwards, padded to the busiest shard's
active documents, since depth gathers weights inside each forward). The one-hot gradient of
the vocab-parallel embedding (the table split over vocab by row and hidden by col) is
assembled from collectives in axon/parallel/comm.py: each rank multiplies the gradient of its
hidden/col slice of the embedded prompt by its depth-gathered table block, the partial dot
products are summed over col (all-reduce), each row rank takes the top-k of its vocab slice,
and those are exchanged over row (an all-reduce of disjoint slots) so every rank picks the
same global top-k. Row and col ranks of a shard draw the same candidates from the same seed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from axon.parallel.comm import all_reduce
from axon.parallel.cross_entropy import vocab_parallel_argmax
from axon.parallel.prefetch import gather_now


@dataclass(frozen=True)
class AcrBudget:
    iterations: int = 200  # GCG iterations per prompt length tried
    candidates: int = 16  # prompts scored per iteration and start (the current one and single swaps)
    top_k: int = 16  # tokens per position the swaps are drawn from
    batch: int = 256  # sequences per forward when scoring candidates
    init: str = "both"  # start from the document's own last L prefix tokens ("context"), "random" tokens, or both

    def starts(self) -> tuple[str, ...]:
        return ("context", "random") if self.init == "both" else (self.init,)


@contextmanager
def _no_pending_reductions(model):
    """The search backpropagates to the embedded prompt only; the linear layers' weight-gradient
    reduce-scatters then run synchronously and are dropped, never joining training's pending ones."""
    layers = [m for m in model.modules() if hasattr(m, "pending")]
    saved = [m.pending for m in layers]
    for m in layers:
        m.pending = None
    try:
        yield
    finally:
        for m, pending in zip(layers, saved):
            m.pending = pending


class PromptSearch:
    """GCG on this rank's shard of documents; `run` returns every document's ACR and prompt length."""

    def __init__(self, model, grid, device, budget: AcrBudget, seed: int):
        if grid.size("pipe") > 1:
            raise ValueError("ACR needs layout.pipe = 1 (the search backpropagates through the whole model)")
        self.model, self.grid, self.device, self.budget, self.seed = model, grid, device, budget, seed
        self.vocab = model.shape.vocab
        self.shards = grid.size("data") * grid.size("depth")
        self.shard = grid.coord("data") * grid.size("depth") + grid.coord("depth")

    # ------------------------------------------------------------------ collectives and forwards

    def _forward(self, rows: torch.Tensor, prompt_len: int):
        """Per-row target loss (mean over the target) and exact reproduction, for [b, L + S] rows."""
        logits = self.model(rows[:, :-1])
        losses = self.model.stage_losses(logits, rows[:, 1:])[:, prompt_len - 1:]
        greedy = vocab_parallel_argmax(logits, self.model.vocab_start, self.model.row_axis)[:, prompt_len - 1:]
        return losses.mean(dim=1), (greedy == rows[:, prompt_len:]).all(dim=1)

    def _top_tokens(self, rows: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """[b, L] x top_k token ids whose one-hot gradient most lowers the target's loss."""
        embedding, held = self.model.tok_embeddings, {}

        def keep_leaf(module, inputs, output):
            held["x"] = output.detach().requires_grad_(True)  # the search stops at the embedded tokens
            return held["x"]

        handle = embedding.register_forward_hook(keep_leaf)
        try:
            with torch.enable_grad():
                logits = self.model(rows[:, :-1])
                loss = self.model.stage_losses(logits, rows[:, 1:])[:, prompt_len - 1:].sum()
                (grad,) = torch.autograd.grad(loss, held["x"])  # [b, L + S - 1, hidden/col], as on every row rank
        finally:
            handle.remove()
        table = gather_now(embedding, torch.float32)  # [vocab/row, hidden/col] block, gathered over depth
        partial = grad[:, :prompt_len].float() @ table.t()  # dot products over this rank's hidden slice
        scores = -all_reduce(partial, self.grid.axis("col"))  # summed over col: this vocab slice's whole gradient
        k = min(self.budget.top_k, scores.shape[-1])
        values, ids = scores.topk(k, dim=-1)
        row, rows_n = self.grid.coord("row"), self.grid.size("row")
        slots_v = torch.zeros((rows_n,) + values.shape, dtype=values.dtype, device=values.device)
        slots_i = torch.zeros((rows_n,) + ids.shape, dtype=torch.float64, device=ids.device)
        slots_v[row], slots_i[row] = values, (ids + embedding.vocab_start).double()
        slots_v = all_reduce(slots_v, self.grid.axis("row"))  # each slot written by one row rank: a gather
        slots_i = all_reduce(slots_i, self.grid.axis("row"))
        merged_v = slots_v.permute(1, 2, 0, 3).reshape(values.shape[0], prompt_len, -1)
        merged_i = slots_i.permute(1, 2, 0, 3).reshape(values.shape[0], prompt_len, -1)
        best = merged_v.topk(min(self.budget.top_k, merged_v.shape[-1]), dim=-1).indices
        return merged_i.gather(-1, best).long()

    def _any(self, flag: bool) -> bool:
        """Whether any shard has `flag` set (every rank gets the same answer)."""
        total = torch.tensor([float(flag)], device=self.device)
        return bool(all_reduce(total, self.grid.axis("data+depth")).item() > 0)

    def _most(self, count: int) -> int:
        """The largest `count` over data x depth shards (sum of one-hot slots)."""
        slots = torch.zeros(self.shards, dtype=torch.float64, device=self.device)
        slots[self.shard] = count
        return int(all_reduce(slots, self.grid.axis("data+depth")).max().item())

    # ------------------------------------------------------------------ the search

    def run(self, documents: list[np.ndarray], prefix: int, suffix: int) -> dict:
        """Per document, the same on every rank: `acr`, `prompt_len` (of the shortest prompt
        found, 0 if none) and `prompt` (its token ids, [] if none)."""
        n = len(documents)
        table = torch.zeros(n, suffix + 1, dtype=torch.float64, device=self.device)  # length, then ids + 1
        if n:
            per_shard = math.ceil(n / self.shards)
            mine = list(range(self.shard * per_shard, min(n, (self.shard + 1) * per_shard)))
            tokens = np.stack([d[: prefix + suffix] for d in documents]).astype(np.int64)
            with _no_pending_reductions(self.model):
                found = self._bisect(tokens, mine, prefix, suffix)
            for i, prompt in found.items():
                table[i, 0] = prompt.numel()
                table[i, 1: 1 + prompt.numel()] = prompt.double() + 1
            table = all_reduce(table, self.grid.axis("data+depth"))  # each document written by one shard
        rows = table.cpu().numpy().astype(np.int64)
        lengths = rows[:, 0]
        return {"acr": np.where(lengths > 0, suffix / np.maximum(lengths, 1), 0.0), "prompt_len": lengths,
                "prompt": [row[1: 1 + length] - 1 for row, length in zip(rows, lengths)]}

    def _bisect(self, tokens: np.ndarray, mine: list[int], prefix: int, suffix: int) -> dict[int, torch.Tensor]:
        """Each document's shortest prompt length by bisection: (fails, succeeds) brackets it, from
        (0, suffix); each round searches every document at the middle of its bracket. Every rank
        runs the same lengths in the same order (the union over shards), so the forwards match."""
        bracket = {i: [0, suffix] for i in mine}
        found: dict[int, torch.Tensor] = {}
        while True:
            wanted = torch.zeros(suffix, dtype=torch.float64, device=self.device)
            middle = {i: (lo + hi) // 2 for i, (lo, hi) in bracket.items() if hi - lo > 1}
            for length in middle.values():
                wanted[length] = 1
            lengths = torch.nonzero(all_reduce(wanted, self.grid.axis("data+depth"))).flatten().tolist()
            if not lengths:
                return found
            for length in lengths:
                at = [i for i in mine if middle.get(i) == length]
                hits = self._search(tokens, at, length, prefix, suffix)
                for i in at:
                    if i in hits:
                        found[i], bracket[i][1] = hits[i], length
                    else:
                        bracket[i][0] = length

    def _search(self, tokens: np.ndarray, docs: list[int], length: int, prefix: int,
                suffix: int) -> dict[int, torch.Tensor]:
        """GCG at one prompt length from every start of `docs` (this shard's; maybe none): the
        prompts that reproduce their document's target."""
        b, device = self.budget, self.device
        target = torch.as_tensor(tokens[:, prefix:], device=device)
        lanes = [(i, start) for i in docs for start in b.starts()]  # a document's starts search side by side
        prompts: dict[tuple[int, str], torch.Tensor] = {}
        for i, start in lanes:
            initial = np.random.default_rng([self.seed, 0xAC5, i, length]).integers(0, self.vocab, size=length)
            if start == "context":  # the document's own tokens just before the target, as far as they go
                own = tokens[i, max(0, prefix - length): prefix]
                initial[length - own.size:] = own
            prompts[(i, start)] = torch.as_tensor(initial, dtype=torch.long, device=device)
        found: dict[int, torch.Tensor] = {}
        pad = (docs[0] if docs else 0, "pad")  # padding rows: any document, any tokens
        for step in range(b.iterations):  # candidate 0 is the current prompt: each is checked as it stands
            active = [lane for lane in lanes if lane[0] not in found]
            if not self._any(bool(active)):
                break
            width = self._most(len(active))
            order = (active * width)[:width] if active else [pad] * width
            filler = torch.zeros(length, dtype=torch.long, device=device)
            current = torch.stack([prompts.get(lane, filler) for lane in order])
            docs_of = [lane[0] for lane in order]
            top = self._top_tokens(torch.cat([current, target[docs_of]], dim=1), length)
            candidates = current.unsqueeze(1).repeat(1, b.candidates, 1)  # candidate 0: unchanged
            for slot, (i, start) in enumerate(order):
                rng = np.random.default_rng([self.seed, 0x6C6, i, length, step, b.starts().index(start)
                                             if start in b.starts() else 9])
                where = rng.integers(0, length, size=b.candidates - 1)
                pick = rng.integers(0, top.shape[-1], size=b.candidates - 1)
                candidates[slot, 1 + np.arange(b.candidates - 1), where] = top[slot, where, pick]
            flat = candidates.reshape(-1, length)
            rows = torch.cat([flat, target[docs_of].repeat_interleave(b.candidates, dim=0)], dim=1)
            losses, exact = [], []
            with torch.no_grad():
                for first in range(0, rows.shape[0], b.batch):
                    loss, hit = self._forward(rows[first: first + b.batch], length)
                    losses.append(loss)
                    exact.append(hit)
            losses = torch.cat(losses).view(width, b.candidates)
            exact = torch.cat(exact).view(width, b.candidates)
            for slot, lane in enumerate(active):
                if lane[0] in found:
                    continue
                if bool(exact[slot].any()):
                    found[lane[0]] = candidates[slot, int(exact[slot].float().argmax())]
                else:
                    prompts[lane] = candidates[slot, int(losses[slot].argmin())]
        return found
