"""A plain single-device PyTorch Llama: the baseline of benchmarks/overhead.py and the
independent reference the tests compare axon against.

Written without any of axon's code (its own RoPE, norm and loss) so that agreement
means something. Parameter names match axon's, so `load_state_dict(full_parameters)`
moves weights across.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, theta: float):
    """Rotate-half rotary embedding of x [batch, heads, seq, d]."""
    seq, d = x.shape[-2], x.shape[-1]
    # Built on x's device: host tables would make every call copy (and, on a GPU, sync) them.
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angle = torch.arange(seq, dtype=torch.float64, device=x.device)[:, None] * freqs[None, :]
    cos = torch.cat([angle.cos(), angle.cos()], -1).to(x.dtype)
    sin = torch.cat([angle.sin(), angle.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.theta = s.heads, s.kv_heads, s.hidden // s.heads, s.rope_theta
        self.wq = nn.Linear(s.hidden, s.heads * self.d, bias=False)
        self.wk = nn.Linear(s.hidden, s.kv_heads * self.d, bias=False)
        self.wv = nn.Linear(s.hidden, s.kv_heads * self.d, bias=False)
        self.wo = nn.Linear(s.heads * self.d, s.hidden, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.heads, self.d).transpose(1, 2)
        k = self.wk(x).view(b, t, self.kv_heads, self.d).transpose(1, 2)
        v = self.wv(x).view(b, t, self.kv_heads, self.d).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.w1 = nn.Linear(s.hidden, s.ffn, bias=False)
        self.w3 = nn.Linear(s.hidden, s.ffn, bias=False)
        self.w2 = nn.Linear(s.ffn, s.hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.attention_norm = RMSNorm(s.hidden, s.norm_eps)
        self.attention = Attention(s)
        self.ffn_norm = RMSNorm(s.hidden, s.norm_eps)
        self.feed_forward = FeedForward(s)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class PlainLlama(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.tok_embeddings = nn.Embedding(shape.vocab, shape.hidden)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.layers))
        self.norm = RMSNorm(shape.hidden, shape.norm_eps)
        self.output = nn.Linear(shape.hidden, shape.vocab, bias=False)

    def forward(self, ids):
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))

    def loss(self, ids, targets):
        logits = self(ids)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
