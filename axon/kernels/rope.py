"""Rotary position embeddings in the rotate-half convention (the Hugging Face Llama layout)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class RopeScaling(NamedTuple):
    """Llama 3.1 ("llama3") frequency scaling; a plain 4-tuple in this order works too.

    Wavelengths longer than original_context / low_freq_factor are stretched by `factor`,
    those shorter than original_context / high_freq_factor are kept, and the band between
    is interpolated smoothly, so short-range attention is unchanged while long-range
    positions reach `factor` times the original context.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


def inverse_frequencies(head_dim: int, theta: float, scaling=None) -> torch.Tensor:
    """The head_dim / 2 rotation frequencies in float64; `scaling` a RopeScaling, a 4-tuple or None."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq
    factor, low, high, context = RopeScaling(*scaling)
    if factor == 1.0:
        return inv_freq
    if not high > low:
        raise ValueError(f"RoPE scaling needs high_freq_factor > low_freq_factor, got {high} and {low}")
    # context / wavelength, and where it lies in the band: 0 at the low-frequency edge, 1 at the high one.
    # Clamping makes the stretched (0) and untouched (1) frequencies the ends of one interpolation.
    periods_in_context = context * inv_freq / (2 * math.pi)
    smooth = ((periods_in_context - low) / (high - low)).clamp(0.0, 1.0)
    return inv_freq * ((1.0 - smooth) / factor + smooth)


def rotary_tables(seq_len: int, head_dim: int, theta: float, device=None, dtype=torch.float32, scaling=None):
    """cos and sin tables of shape [seq_len, head_dim], computed in float64 for accuracy."""
    inv_freq = inverse_frequencies(head_dim, theta, scaling)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
