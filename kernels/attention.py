"""Causal self-attention on local heads, through PyTorch's fused SDPA kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [batch, q_heads, seq, d]; k, v: [batch, kv_heads, seq, d] with q_heads a multiple of kv_heads."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
