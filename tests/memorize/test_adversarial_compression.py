"""ACR by greedy coordinate-gradient search: a tiny model trained on one string compresses it
(a prompt shorter than the string makes greedy decoding reproduce it), a random string it
never saw does not within the same budget, and 4-rank layouts find the same prompt lengths."""

from __future__ import annotations

import numpy as np
import torch

from axon.parallel.grid import Grid
from axon.memorize.adversarial_compression import AcrBudget, PromptSearch
from axon.model import Llama, initialize_parameters
from axon.parallel.full_tensor import full_parameters
from axon.parallel.sharding import named_shardings, shard_from_global
from axon.testing.reference_model import PlainLlama
from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.testing.spawn import run_distributed

SHAPE = ModelShape(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=64, seq_len=32)
PREFIX, SUFFIX = 8, 16
BUDGET = AcrBudget(iterations=8, candidates=16, top_k=8, init="random")  # random starts: the gradient must find it


def _strings():
    rng = np.random.default_rng(11)
    memorized, unseen = rng.permutation(SHAPE.vocab)[: PREFIX + SUFFIX], rng.permutation(SHAPE.vocab)[:PREFIX + SUFFIX]
    return memorized, unseen


def _trained() -> dict[str, torch.Tensor]:
    """The string from a random point of its first 8 tokens on, after 0-8 random tokens, 300
    AdamW steps: any few of its tokens then bring the rest (as a document cut anywhere does)."""
    torch.manual_seed(0)
    grid = Grid(Layout(), 0)
    model = Llama(SHAPE, grid)
    initialize_parameters(model, grid, seed=1)
    memorized, _ = _strings()
    rng = np.random.default_rng(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        rows = []
        for _ in range(8):
            lead = rng.integers(0, 9)
            row = np.concatenate([rng.integers(0, SHAPE.vocab, size=lead), memorized[rng.integers(0, PREFIX):]])
            rows.append(np.pad(row, (0, SHAPE.seq_len + 1 - row.size), constant_values=0))
        batch = torch.as_tensor(np.stack(rows))
        loss = model.token_losses(batch[:, :-1], batch[:, 1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return full_parameters(model, grid)


def _loaded(grid, weights) -> Llama:
    """This rank's shards of the trained model's full weights."""
    model = Llama(SHAPE, grid)
    with torch.no_grad():
        for name, param, sharding in named_shardings(model):
            full = weights[name]
            read = lambda rows, cols, full=full: full[cols] if full.dim() == 1 else full[rows, cols]
            param.copy_(shard_from_global(sharding, grid, read, param.numel()))
    return model


def _search(rank, world, layout, weights):
    grid = Grid(layout, rank)
    model = _loaded(grid, weights)
    found = PromptSearch(model, grid, torch.device("cpu"), BUDGET, seed=3).run(list(_strings()), PREFIX, SUFFIX)
    grid.destroy()
    return found["acr"].tolist(), found["prompt_len"].tolist(), [p.tolist() for p in found["prompt"]]


def test_memorized_string_compresses_and_an_unseen_one_does_not():
    weights = _trained()
    (memorized_acr, unseen_acr), (memorized_len, unseen_len), (prompt, none) = _search(0, 1, Layout(), weights)
    assert memorized_acr > 1 and memorized_acr == SUFFIX / memorized_len == SUFFIX / len(prompt)
    assert unseen_acr <= 1 and unseen_len == 0 and none == []  # nothing below 16 tokens reproduces it
    # The prompt really works: greedy decoding from it, by a plain PyTorch loop, gives the string.
    plain = PlainLlama(SHAPE)
    plain.load_state_dict(weights)
    sequence = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(SUFFIX):
            sequence = torch.cat([sequence, plain(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert sequence[0, len(prompt):].tolist() == _strings()[0][PREFIX:].tolist()
    # On 4 ranks: vocab split over row, hidden over col; documents over data and depth.
    for layout in (Layout(row=2, col=2), Layout(data=2, depth=2)):
        for rank_result in run_distributed(4, _search, layout, weights):
            assert rank_result[1] == [memorized_len, unseen_len], layout


def test_bisection_finds_each_documents_shortest_length(monkeypatch):
    """With a search that succeeds exactly from a per-document length on, the bisection returns
    that length (any length below the target's, not only powers of two), trying about log2(16)
    lengths per document."""
    thresholds = {0: 1, 1: 3, 2: 11, 3: 15, 4: 16}  # 16: no prompt shorter than the target works
    tried = {i: [] for i in thresholds}

    def search(self, tokens, docs, length, prefix, suffix):
        for i in docs:
            tried[i].append(length)
        return {i: torch.arange(length) for i in docs if length >= thresholds[i]}

    monkeypatch.setattr(PromptSearch, "_search", search)
    grid = Grid(Layout(), 0)
    model = Llama(SHAPE, grid)
    docs = [np.arange(PREFIX + SUFFIX) for _ in thresholds]
    found = PromptSearch(model, grid, torch.device("cpu"), BUDGET, seed=0).run(docs, PREFIX, SUFFIX)
    assert found["prompt_len"].tolist() == [1, 3, 11, 15, 0]
    assert found["acr"].tolist() == [16.0, 16 / 3, 16 / 11, 16 / 15, 0.0]
    assert all(len(lengths) == 4 for lengths in tried.values()) and tried[4] == [8, 12, 14, 15]
