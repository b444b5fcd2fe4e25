"""Cross-entropy over logits whose vocabulary is split over row.

No rank ever holds a full logits row: the max, the sum of exponentials and the
target's logit are each reduced over row from the local slices (the local work in between
is axon.kernels.cross_entropy's). A keep mask (the Goldfish loss) zeroes the loss and the
gradient of the tokens it leaves out.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from axon.parallel.comm import all_reduce
from axon.kernels.cross_entropy import row_max, shifted_exp, softmax_grad_


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, keep, vocab_start, axis):
        # logits: [tokens, vocab/row] on this rank; targets: [tokens] global ids.
        top = all_reduce(row_max(logits), axis, op=dist.ReduceOp.MAX)
        local = targets - vocab_start
        inside = (local >= 0) & (local < logits.shape[-1])
        local = local.masked_fill(~inside, 0)
        exp, target_logit = shifted_exp(logits, top, local, inside)
        # One all-reduce carries both per-token sums.
        sums = all_reduce(torch.stack([exp.sum(dim=-1), target_logit]), axis)
        sum_exp, target_logit = sums[0], sums[1]
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local, inside, keep)
        loss = sum_exp.log() - target_logit
        return loss if keep is None else loss.masked_fill_(~keep, 0.0)

    @staticmethod
    def backward(ctx, dloss):
        softmax, local, inside, keep = ctx.saved_tensors  # saved for this one use: modified in place
        if keep is not None:
            dloss = dloss.masked_fill(~keep, 0.0)
        return softmax_grad_(softmax, local, inside, dloss), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int,
                                 axis, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token loss, identical on every rank of the row group. logits [..., vocab/row];
    `keep` (bool, shaped like targets) zeroes the loss and gradient of dropped tokens."""
    # The loss is computed in fp32 whatever the logits' dtype (row_max and shifted_exp widen them).
    flat = logits.reshape(-1, logits.shape[-1])
    flat_keep = None if keep is None else keep.reshape(-1)
    loss = _VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), flat_keep, vocab_start, axis)
    return loss.view(targets.shape)


def vocab_parallel_argmax(logits: torch.Tensor, vocab_start: int, axis) -> torch.Tensor:
    """Greedy token ids [...] from logits [..., vocab/row] split over row; ties go to the
    lowest id, as torch.argmax on the full row would."""
    local_max, local_index = logits.max(dim=-1)  # in the logits' dtype: widening keeps the order
    local_max = local_max.float()
    best = all_reduce(local_max.clone(), axis, op=dist.ReduceOp.MAX)
    # Ranks without the maximum offer an id past any real one, so MIN picks the lowest holder.
    big = torch.iinfo(torch.int64).max
    first = torch.where(local_max == best, local_index.long() + vocab_start, torch.full_like(local_index, big).long())
    return all_reduce(first, axis, op=dist.ReduceOp.MIN)
