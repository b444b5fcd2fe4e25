"""A Llama-style decoder built from axon's parallel layers.

Read it as plain PyTorch: the parallel layers take a grid, hold only this rank's
shards, and do their own communication. Activations in the residual stream are
[batch, seq, hidden/col], replicated over row.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from axon.parallel.cross_entropy import vocab_parallel_argmax, vocab_parallel_cross_entropy
from axon.parallel.embedding import VocabParallelEmbedding
from axon.parallel.linear import TensorParallelLinear
from axon.parallel.norm import ShardedRMSNorm
from axon.parallel.pipeline import StagePeers
from axon.model.stages import chunk_layers
from axon.kernels import causal_attention, rotary_tables
from axon.kernels.local_linear import local_linear
from axon.kernels.local_math import EAGER, LocalMath, warm_up
from axon.parallel.prefetch import gather_now
from axon.spec.shapes import ModelShape
from axon.spec.parameters import LINEAR_ORIENTATIONS as ORIENT

INIT_STD = 0.02


def engine_linear(layer, x):
    """A linear layer as the engine runs it: its own forward, with the grid's collectives."""
    return layer(x)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, grid, out_std: float):
        super().__init__()
        d, row = shape.head_dim, grid.size("row")
        self.head_dim = d
        self.local_heads, self.local_kv_heads = shape.heads // row, shape.kv_heads // row
        self.wq = TensorParallelLinear(grid, shape.hidden, shape.heads * d, ORIENT["attention.wq"], INIT_STD)
        self.wk = TensorParallelLinear(grid, shape.hidden, shape.kv_heads * d, ORIENT["attention.wk"], INIT_STD)
        self.wv = TensorParallelLinear(grid, shape.hidden, shape.kv_heads * d, ORIENT["attention.wv"], INIT_STD)
        self.wo = TensorParallelLinear(grid, shape.heads * d, shape.hidden, ORIENT["attention.wo"], out_std)
        self.local_math = EAGER

    def heads(self, projected: torch.Tensor, count: int) -> torch.Tensor:
        """[batch, seq, count * head_dim] -> [batch, count, seq, head_dim] (a view)."""
        batch, seq, _ = projected.shape
        return projected.view(batch, seq, count, self.head_dim).transpose(1, 2)

    def forward(self, x, cos, sin, project=engine_linear):
        batch, seq, _ = x.shape
        q, k = self.local_math.rotate_query_key(self.heads(project(self.wq, x), self.local_heads),
                                                self.heads(project(self.wk, x), self.local_kv_heads), cos, sin)
        out = causal_attention(q, k, self.heads(project(self.wv, x), self.local_kv_heads))
        return project(self.wo, out.transpose(1, 2).reshape(batch, seq, -1))

    def warm_up_calls(self, x: torch.Tensor, cos, sin) -> list:
        batch, seq, _ = x.shape

        def projected(count):
            return torch.zeros(batch, seq, count * self.head_dim, dtype=x.dtype, device=x.device, requires_grad=True)
        return [("rotate_query_key", (self.heads(projected(self.local_heads), self.local_heads),
                                      self.heads(projected(self.local_kv_heads), self.local_kv_heads), cos, sin))]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, shape: ModelShape, grid, out_std: float):
        super().__init__()
        self.w1 = TensorParallelLinear(grid, shape.hidden, shape.ffn, ORIENT["feed_forward.w1"], INIT_STD)
        self.w3 = TensorParallelLinear(grid, shape.hidden, shape.ffn, ORIENT["feed_forward.w3"], INIT_STD)
        self.w2 = TensorParallelLinear(grid, shape.ffn, shape.hidden, ORIENT["feed_forward.w2"], out_std)
        self.local_math = EAGER

    def forward(self, x, project=engine_linear):
        return project(self.w2, self.local_math.swiglu(project(self.w1, x), project(self.w3, x)))

    def warm_up_calls(self, x: torch.Tensor) -> list:
        width = self.w1.block_shape[0]  # w1's local output features: the gate's last dimension
        gate, up = (torch.zeros(*x.shape[:-1], width, dtype=x.dtype, device=x.device, requires_grad=True)
                    for _ in range(2))
        return [("swiglu", (gate, up))]


class Block(nn.Module):
    def __init__(self, shape: ModelShape, grid):
        super().__init__()
        out_std = INIT_STD / math.sqrt(2 * shape.layers)  # residual-branch outputs start small
        self.attention_norm = ShardedRMSNorm(grid, shape.hidden, shape.norm_eps)
        self.attention = Attention(shape, grid, out_std)
        self.ffn_norm = ShardedRMSNorm(grid, shape.hidden, shape.norm_eps)
        self.feed_forward = FeedForward(shape, grid, out_std)
        self.linears = (self.attention.wq, self.attention.wk, self.attention.wv, self.attention.wo,
                        self.feed_forward.w1, self.feed_forward.w3, self.feed_forward.w2)
        for position, layer in enumerate(self.linears):
            layer.block_position = position  # where _with_weights finds its weight copy
        self.compiled_whole = None  # set by compile_whole: this block traced as one graph

    def forward(self, x, cos, sin, project=engine_linear):
        if self.compiled_whole is not None and project is engine_linear:
            # The weights' compute-dtype copies are made (or reused) here, outside the graph.
            return self.compiled_whole(x, cos, sin, *(gather_now(layer, x.dtype) for layer in self.linears))
        x, normed = self.ffn_norm.add_and_normalize(x, self.attention(self.attention_norm(x), cos, sin, project))
        return x + self.feed_forward(normed, project)

    def _with_weights(self, x, cos, sin, *weights):
        """forward with each linear layer as its local GEMMs on the given weight copies (what
        compile_whole traces: no collective, no Python state)."""
        return self.forward(x, cos, sin, lambda layer, h: local_linear(h, layer.weight, weights[layer.block_position]))

    def compile_whole(self) -> None:
        """Trace the whole block as one graph (a layout with no collective inside a block)."""
        for module in self.modules():
            if hasattr(module, "local_math"):
                module.local_math = EAGER  # traced into the block's graph, not compiled apart
        self.compiled_whole = torch.compile(self._with_weights, fullgraph=True)

    def warm_up_calls(self, x: torch.Tensor, cos, sin) -> list:
        return [*self.attention_norm.warm_up_calls(x), *self.attention.warm_up_calls(x, cos, sin),
                *self.feed_forward.warm_up_calls(x)]


class Llama(nn.Module):
    """One pipeline stage of the model (the whole model when layout.pipe is 1): its blocks
    keep their global names (layers.{i}), the first stage adds the embedding, the last the
    final norm and the vocab-parallel LM head. With layout.virtual_stages v the stage holds v
    chunks of blocks (`chunks[c]`); the embedding runs before the first stage's chunk 0, the
    head after the last stage's chunk v - 1."""

    def __init__(self, shape: ModelShape, grid, compute_dtype: torch.dtype = torch.float32,
                 stage_counts: tuple[int, ...] = ()):
        super().__init__()
        self.shape = shape
        # Parameters stay fp32 (the optimizer's master copy); activations and the weights
        # gathered for each GEMM take the compute dtype.
        self.compute_dtype = compute_dtype
        self.recompute_blocks = False  # train.recompute: block (activation checkpointing per block)
        self.row_axis = grid.axis("row")
        stages, stage = grid.size("pipe"), grid.coord("pipe")
        self.first_stage, self.last_stage = stage == 0, stage == stages - 1
        self.peers = StagePeers(grid, shape.hidden) if stages > 1 else None  # evaluation passes through stages
        self.chunks = chunk_layers(shape, stages, stage, stage_counts, grid.layout.virtual_stages)
        self.layer_ids = [i for chunk in self.chunks for i in chunk]
        if self.first_stage:
            self.tok_embeddings = VocabParallelEmbedding(grid, shape.vocab, shape.hidden, INIT_STD)
        self.layers = nn.ModuleDict({str(i): Block(shape, grid) for i in self.layer_ids})
        if self.last_stage:
            self.norm = ShardedRMSNorm(grid, shape.hidden, shape.norm_eps)
            self.output = TensorParallelLinear(grid, shape.hidden, shape.vocab, ORIENT["output"], INIT_STD)
            self.vocab_start = self.output.sharding.block_slices(grid)[0].start
        # (seq_len, device, dtype) -> (cos, sin): a plain dict, so no buffer reaches the state
        # dict or the parameter lists. A few keys only (generation grows seq_len one by one).
        self._rope_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_tables(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [seq_len, head_dim] in the compute dtype, built once per length and device:
        rotary_tables works in float64 on the host and copies to the device, a sync per call."""
        key = (seq_len, device, self.compute_dtype)
        if key not in self._rope_tables:
            s = self.shape
            scaling = (s.rope_scaling_factor, s.rope_low_freq_factor, s.rope_high_freq_factor, s.rope_original_context)
            with torch.inference_mode(False):  # cached tables must serve later autograd passes too
                cos, sin = rotary_tables(seq_len, s.head_dim, s.rope_theta, device, scaling=scaling)
            if len(self._rope_tables) >= 4:
                del self._rope_tables[next(iter(self._rope_tables))]  # the oldest
            self._rope_tables[key] = cos.to(self.compute_dtype), sin.to(self.compute_dtype)
        return self._rope_tables[key]

    def compile_local_math(self, micro_batch: int, device: torch.device, whole_blocks: bool = False) -> float:
        """Swap every module's local math for the compiled functions (train.compile) and
        compile them now, on inputs shaped like a training micro-batch's, so the first step
        does not pay for it; returns the seconds compiling took. With `whole_blocks` (no
        collective inside a block) each block is traced as one graph instead."""
        compiled = LocalMath(compiled=True)
        for module in self.modules():
            if hasattr(module, "local_math"):
                module.local_math = compiled
        if not self.layers:
            return 0.0
        first = self.layers[str(self.layer_ids[0])]
        seq, width = self.shape.seq_len, first.attention_norm.weight.shape[0]
        x = torch.zeros(micro_batch, seq, width, dtype=self.compute_dtype, device=device, requires_grad=True)
        cos, sin = self.rope_tables(seq, device)
        if not whole_blocks:
            return warm_up(compiled, first.warm_up_calls(x, cos, sin))
        started = time.perf_counter()
        for block in self.layers.values():
            block.compile_whole()
            out = block(x, cos, sin)
            torch.autograd.grad(out, x, torch.ones_like(out))  # the backward graph too; no parameter gets a gradient
        if self.last_stage:
            warm_up(compiled, self.norm.warm_up_calls(x)[:1])  # the final norm: rms_norm
        return time.perf_counter() - started

    def stage_forward(self, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """This stage's chunk `chunk`: ids [batch, seq] (the first stage's chunk 0) or the
        residual stream [batch, seq, hidden/col] in; the residual stream or, after the last
        stage's last chunk, this rank's logits slice [batch, seq, vocab/row] out."""
        cos, sin = self.rope_tables(x.shape[1], x.device)
        if self.first_stage and chunk == 0:
            x = self.tok_embeddings(x).to(self.compute_dtype)
        for layer in (self.layers[str(i)] for i in self.chunks[chunk]):
            if self.recompute_blocks and torch.is_grad_enabled():
                # Keep only the block's input; backward re-runs its forward (collectives included,
                # in the same order on every rank) to rebuild the activations.
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.output(self.norm(x)) if self.last_stage and chunk == len(self.chunks) - 1 else x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [batch, seq] -> this rank's logits slice [batch, seq, vocab/row] (one stage only)."""
        if not (self.first_stage and self.last_stage):
            raise RuntimeError("a pipeline stage runs stage_forward; the whole forward needs layout.pipe = 1")
        return self.stage_forward(ids)

    def stage_losses(self, logits: torch.Tensor, targets: torch.Tensor,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token cross-entropy from the last stage's logits slice."""
        return vocab_parallel_cross_entropy(logits, targets, self.vocab_start, self.row_axis, keep)

    def _evaluate(self, ids: torch.Tensor, head, result_dtype: torch.dtype) -> torch.Tensor:
        """head(this rank's logits slice) -> [batch, seq], on every stage (forward only)."""
        if self.peers is None:
            return head(self(ids))
        return self.peers.forward_only(self.stage_forward, ids, head, self.compute_dtype, result_dtype)

    def token_losses(self, ids: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token cross-entropy [batch, seq], computed without gathering the vocabulary;
        tokens where `keep` is False (the Goldfish loss) count zero. With pipeline stages it
        is evaluation only (training runs the 1F1B schedule)."""
        return self._evaluate(ids, lambda logits: self.stage_losses(logits, targets, keep), torch.float32)

    def greedy_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The argmax next token at every position [batch, seq], the same on every row rank and stage."""
        return self._evaluate(ids, lambda logits: vocab_parallel_argmax(logits, self.vocab_start, self.row_axis),
                              torch.int64)
