"""Model FLOPs per token, the convention every throughput figure in axon uses."""

from __future__ import annotations

from perfmodel.models import ModelShape


def matmul_params(shape: ModelShape) -> int:
    """Parameters that take part in a matmul: every layer's weights and the LM head.

    The input embedding table is a lookup, not a matmul, so it is left out; norm
    weights are counted (they are tiny).
    """
    h, kv_dim = shape.hidden, shape.kv_heads * shape.head_dim
    attention = h * h + 2 * h * kv_dim + h * h  # q, k, v, o
    mlp = 3 * h * shape.ffn  # gate, up, down
    per_layer = attention + mlp + 2 * h  # two RMSNorm weights
    return shape.layers * per_layer + h + shape.vocab * h  # final norm + LM head


def flops_per_token(shape: ModelShape, seq_len: int | None = None) -> float:
    """6 N + 12 L h s: forward+backward matmuls plus attention scores, no causal discount."""
    s = shape.seq_len if seq_len is None else seq_len
    return 6.0 * matmul_params(shape) + 12.0 * shape.layers * shape.hidden * s
