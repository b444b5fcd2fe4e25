"""A linear layer's local GEMMs as one op torch.compile can call but need not look into, for
blocks compiled whole (train.compile on a layout with no collective inside a block:
row = col = depth = 1).

The engine's linear layer is an autograd Function whose backward reduces over the grid's axes
and whose weight cast is kept across uses: dynamo cannot trace it. Where no axis splits a
block there is nothing to reduce, so the layer is its GEMMs alone: forward x @ W^T with the
weight's compute-dtype copy, backward dX = dY W and dW = dY^T X summed in fp32 and handed
to the fp32 master weight (axon.kernels.gemm.mm_fp32_out), the same numbers as the Function.
As custom ops they are opaque to the compiler (GEMMs are library calls either way), and the
elementwise work around them fuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from axon.kernels.gemm import mm_fp32_out


@torch.library.custom_op("axon::local_linear", mutates_args=())
def local_linear(x: torch.Tensor, weight: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
    """x @ cast^T, differentiable into `weight` (the fp32 master whose [out, in] copy `cast` is)."""
    return F.linear(x, cast)


@local_linear.register_fake
def _(x, weight, cast):
    return x.new_empty((*x.shape[:-1], cast.shape[0]))


@torch.library.custom_op("axon::local_linear_backward", mutates_args=())
def local_linear_backward(dy: torch.Tensor, x: torch.Tensor, cast: torch.Tensor,
                          weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX, dW): dW in the master weight's dtype and shape, never rounded to the compute dtype."""
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    dw = dy2.t() @ x2 if dy2.dtype == weight.dtype else mm_fp32_out(dy2.t(), x2)
    return dy @ cast, dw.reshape(weight.shape)


@local_linear_backward.register_fake
def _(dy, x, cast, weight):
    return dy.new_empty(x.shape), weight.new_empty(weight.shape)


def _save(ctx, inputs, output):
    x, weight, cast = inputs
    ctx.save_for_backward(x, weight, cast)


def _backward(ctx, dy):
    x, weight, cast = ctx.saved_tensors
    dx, dw = local_linear_backward(dy, x, cast, weight)
    return dx, dw, None


local_linear.register_autograd(_backward, setup_context=_save)
