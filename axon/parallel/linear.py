"""The 3D tensor-parallel linear layer: Y = X W^T with W split over row, col and depth.

A "normal" layer splits W's input dimension over col and its output over row; a
"transposed" layer swaps them. Alternating the two means one layer's output layout
is the next one's input layout, so consecutive layers need no re-layout.

Forward:  all-gather W over depth -> local GEMM -> all-reduce Y over the axis splitting `in`.
Backward: all-gather W over depth again (it is not kept) -> dX = dY W, all-reduced over the
          axis splitting `out`; dW = dY^T X, reduce-scattered over depth (in bf16 on the wire
          with train.grad_reduce_dtype: bfloat16, summed back into the fp32 gradient).

The three local GEMMs run in fixed modes (forward x @ W^T "NT", dX "NN", dW "TN") unless a
kernels.GemmTuner is attached as `layer.gemm_tuner`; then each runs the mode the tuner timed
fastest for its shape. A GEMM is local, so the choice never changes the collectives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from axon.parallel.comm import all_reduce, all_reduce_start, scatter_block_grad, scatter_block_grad_start
from axon.parallel.prefetch import fetch_weight
from axon.parallel.sharding import Sharding
from axon.kernels.gemm import mm_fp32_out
from axon.spec.parameters import ORIENTATIONS



class TensorParallelLinear(nn.Module):
    def __init__(self, grid, in_features: int, out_features: int, orientation: str, init_std: float):
        super().__init__()
        out_axis, in_axis = ORIENTATIONS[orientation]
        self.sharding = Sharding((out_features, in_features), (out_axis, in_axis), depth_sharded=True)
        self.init_std = init_std
        self.out_axis, self.in_axis = grid.axis(out_axis), grid.axis(in_axis)
        self.depth_axis = grid.axis("depth")
        self.block_shape = self.sharding.block_shape(grid)
        self.weight = nn.Parameter(torch.empty(self.sharding.shard_numel(grid)))
        # Overlap switches, set by axon.parallel.overlap.enable_overlap; off = synchronous.
        self.overlap_all_reduce = False
        self.pending = None  # PendingReductions: where ORS leaves its reduce-scatters
        self.prefetcher = None  # WeightPrefetcher: OAG's depth all-gathers issued ahead
        self.gemm_tuner = None  # kernels.GemmTuner, set from outside; None = the fixed modes
        self.grad_reduce_dtype = None  # dW's depth reduce-scatter wire dtype (GradientBuckets sets bf16); None = fp32
        self.keep_cast = False  # keep the weight's compute-dtype copy until it changes (prefetch.cast_shard)
        self.kept_cast = None  # (weight version, dtype, the copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TensorParallelLinearFn.apply(x, self.weight, self)

    def extra_repr(self) -> str:
        out_f, in_f = self.sharding.global_shape
        return f"in={in_f}, out={out_f}, local block={tuple(self.block_shape)}, axes={self.sharding.dim_axes}"


class _TensorParallelLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_shard, layer: TensorParallelLinear):
        # The weight takes the activations' dtype before the gather: bf16 halves its traffic.
        weight = fetch_weight(layer, x.dtype)
        if layer.gemm_tuner is None:
            local = F.linear(x, weight)
        else:
            local = _tuned(layer.gemm_tuner, x, weight.t(), "forward")
        y = all_reduce(local, layer.in_axis)  # sum partial products over `in`
        ctx.save_for_backward(x, weight_shard)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight_shard = ctx.saved_tensors
        layer = ctx.layer
        weight = fetch_weight(layer, dy.dtype)
        dx = dy @ weight if layer.gemm_tuner is None else _tuned(layer.gemm_tuner, dy, weight, "dX")
        # Sum partial dX over `out`; with OAR it travels while the dW GEMM below computes.
        dx_handle = all_reduce_start(dx, layer.out_axis) if layer.overlap_all_reduce else None
        if not layer.overlap_all_reduce:
            all_reduce(dx, layer.out_axis)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        if dy2.dtype != weight_shard.dtype:
            # bf16 compute: dW leaves the GEMM in fp32 (the master dtype), never rounded to bf16,
            # so the depth reduce-scatter and the data all-reduce sum fp32 gradients.
            dw = mm_fp32_out(dy2.t(), x2)
        elif layer.gemm_tuner is None:
            dw = dy2.t() @ x2
        else:
            dw = layer.gemm_tuner.matmul(dy2.t(), x2, "dW")
        if dx_handle is not None:
            dx_handle.wait()
        if layer.pending is not None and layer.depth_axis.group is not None:
            # ORS: the reduce-scatter runs on through the rest of backward; PendingReductions
            # adds it to the gradient before anything reads it.
            shard, handle = scatter_block_grad_start(dw, weight_shard.numel(), layer.depth_axis,
                                                     layer.grad_reduce_dtype)
            layer.pending.add(layer.weight, handle, shard)
            return dx, None, None
        return dx, scatter_block_grad(dw, weight_shard.numel(), layer.depth_axis, layer.grad_reduce_dtype), None


def _tuned(tuner, x: torch.Tensor, matrix: torch.Tensor, label: str) -> torch.Tensor:
    """x[..., K] @ matrix[K, N] through the tuner, as one 2-D GEMM over all leading dimensions."""
    product = tuner.matmul(x.reshape(-1, x.shape[-1]), matrix, label)
    return product.view(*x.shape[:-1], matrix.shape[1])
