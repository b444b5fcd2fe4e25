"""Cross-entropy over logits whose vocabulary is split over row.

No rank ever holds a full logits row: the max, the sum of exponentials and the
target's logit are each reduced over row from the local slices.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from axon.parallel.comm import all_reduce


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, vocab_start, axis):
        # logits: [tokens, vocab/row] on this rank; targets: [tokens] global ids.
        row_max = all_reduce(logits.max(dim=-1).values, axis, op=dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)
        exp = shifted.exp()
        local = targets - vocab_start
        inside = (local >= 0) & (local < logits.shape[-1])
        local = local.masked_fill(~inside, 0)
        target_logit = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~inside, 0.0)
        # One all-reduce carries both per-token sums.
        sums = all_reduce(torch.stack([exp.sum(dim=-1), target_logit]), axis)
        sum_exp, target_logit = sums[0], sums[1]
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local, inside)
        return sum_exp.log() - target_logit

    @staticmethod
    def backward(ctx, dloss):
        softmax, local, inside = ctx.saved_tensors
        grad = softmax  # saved for this one use; modified in place
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows[inside], local[inside]] -= 1.0
        return grad.mul_(dloss.unsqueeze(-1)), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int,
                                 axis) -> torch.Tensor:
    """Per-token loss, identical on every rank of the row group. logits [..., vocab/row]."""
    flat = logits.reshape(-1, logits.shape[-1]).float()  # the loss is always computed in fp32
    loss = _VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), vocab_start, axis)
    return loss.view(targets.shape)
