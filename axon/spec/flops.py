"""Model FLOPs per token, the convention every throughput figure in axon uses."""

from __future__ import annotations

from axon.spec.shapes import ModelShape
from axon.spec.parameters import matmul_parameters


def flops_per_token(shape: ModelShape, seq_len: int | None = None) -> float:
    """6 N + 12 L h s: forward+backward matmuls plus attention scores, no causal discount."""
    s = shape.seq_len if seq_len is None else seq_len
    return 6.0 * matmul_parameters(shape) + 12.0 * shape.layers * shape.hidden * s
