"""The model's local math between collectives — RMSNorm, RoPE, SwiGLU, a residual add —
eager or compiled (train.compile).

Eager, each of these is several kernels (RMSNorm upcasts, squares, sums, scales and casts
back: about 9 forward and 16 backward), and on a GPU at 125M the step is bound by launching
them. Compiled, inductor fuses each function into one or two kernels forward and backward.
Every function here is pure local tensor math: the collectives stay outside (an RMSNorm
split over col computes `square_sum`, all-reduces it, then `rms_scale`), so compiling never
changes what is communicated, only how the local numbers are computed (fp32 results agree
with eager to rounding).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from axon.kernels.rope import apply_rotary


def square_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares over the last dimension, in fp32 [..., 1]."""
    return x.float().pow(2).sum(-1, keepdim=True)


def rms_scale(x: torch.Tensor, squares: torch.Tensor, weight: torch.Tensor, hidden: int, eps: float) -> torch.Tensor:
    """x normalized by the root mean square whose summed squares over all `hidden` entries are `squares`."""
    x32 = x.float()  # statistics in fp32 whatever the compute dtype
    return (x32 * torch.rsqrt(squares / hidden + eps) * weight).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, hidden: int, eps: float) -> torch.Tensor:
    """RMSNorm of a hidden vector held whole on this rank."""
    x32 = x.float()  # one fp32 copy for both the statistics and the scaling (eager keeps it for backward)
    return rms_scale(x32, square_sum(x32), weight, hidden, eps).to(x.dtype)


def add_square_sum(x: torch.Tensor, update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + update, its sum of squares): a residual add fused with the next norm's statistics."""
    total = x + update
    return total, square_sum(total)


def add_rms_norm(x: torch.Tensor, update: torch.Tensor, weight: torch.Tensor, hidden: int,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + update, RMSNorm of it) for a hidden vector held whole."""
    total = x + update
    return total, rms_norm(total, weight, hidden, eps)


def rotate_query_key(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys together."""
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


FUNCTIONS = (square_sum, rms_scale, rms_norm, add_square_sum, add_rms_norm, rotate_query_key, swiglu)


class LocalMath:
    """The functions above as a model calls them: the eager ones, or each wrapped in
    torch.compile(fullgraph=True), so a graph break is an error rather than a silent fall
    back to eager. Shapes are compiled static first; a new shape (evaluation's batch, a
    generation's growing length) recompiles once with dynamic sizes, then no more."""

    def __init__(self, compiled: bool):
        self.compiled = compiled
        for fn in FUNCTIONS:
            setattr(self, fn.__name__, torch.compile(fn, fullgraph=True) if compiled else fn)

    def __repr__(self) -> str:
        return f"LocalMath({'compiled' if self.compiled else 'eager'})"


EAGER = LocalMath(compiled=False)  # immutable: what every module uses until a model is compiled


def warm_up(math: LocalMath, calls) -> float:
    """Run each (function name, args) in `calls` forward and backward once, so compilation
    happens here and not inside the first timed step; returns the seconds it took. Inputs
    are fresh tensors (no parameter gets a gradient)."""
    started = time.perf_counter()
    for name, args in calls:
        outputs = getattr(math, name)(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        grads = [o for o in outputs if o.requires_grad]
        if grads:
            torch.autograd.backward(grads, [torch.ones_like(o) for o in grads])
    return time.perf_counter() - started
