"""Causal self-attention on local heads, through PyTorch's fused SDPA kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# SDPA shares key/value heads among query heads itself (enable_gqa) from torch 2.5.
SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [batch, q_heads, seq, d]; k, v: [batch, kv_heads, seq, d] with q_heads a multiple of kv_heads."""
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
