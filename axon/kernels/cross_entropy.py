"""The local work of a cross-entropy over a slice of the vocabulary, shared by the engine's
vocab-parallel loss (axon.parallel.cross_entropy, which adds the reductions over row) and by
`perfmodel calibrate`, which times exactly these ops.

The logits are [tokens, vocab slice] in fp32, often the largest tensor of a step, so each
pass over them counts: the max skips the indices it does not need, and the exponentials are
taken in place in the one new tensor, which is then kept as the softmax for backward. On a
CPU every fresh tensor of that size is also fresh pages the kernel must fault in.
"""

from __future__ import annotations

import torch


def row_max(logits: torch.Tensor) -> torch.Tensor:
    """Each token's largest logit on this slice [tokens], in fp32 (values only: no argmax pass).
    Taken in the logits' own dtype: the largest bf16 value widened is the largest widened value."""
    return logits.amax(dim=-1).float()


def shifted_exp(logits: torch.Tensor, top: torch.Tensor, local_targets: torch.Tensor,
                inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp(logits - top) [tokens, slice], each token's target logit minus top [tokens], 0
    where the target is not on this slice). `local_targets` index the slice, 0 where not `inside`.
    bf16 logits are widened inside the subtraction (promoted against the fp32 `top`), so the
    fp32 work needs no separate fp32 copy of them."""
    shifted = logits - top.unsqueeze(-1)
    target = shifted.gather(-1, local_targets.unsqueeze(-1)).squeeze(-1).masked_fill_(~inside, 0.0)
    return shifted.exp_(), target


def softmax_grad_(softmax: torch.Tensor, local_targets: torch.Tensor, inside: torch.Tensor,
                  dloss: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(logits), in place in `softmax`: (softmax - one_hot(target)) * dloss per token."""
    # Static shapes, no boolean indexing (a nonzero, so a host sync): add -1 at the target where
    # `inside` and -0.0 elsewhere, which leaves every entry bitwise as it was (x + -0.0 == x).
    softmax.scatter_add_(-1, local_targets.unsqueeze(-1), -inside.to(softmax.dtype).unsqueeze(-1))
    return softmax.mul_(dloss.unsqueeze(-1))


class SliceCrossEntropy(torch.autograd.Function):
    """Per-token loss [tokens] over logits [tokens, vocab] that hold the whole vocabulary: the
    engine's vocab-parallel loss with row = 1 (its reductions skipped), for measurements that
    must run the engine's ops (perfmodel calibrate)."""

    @staticmethod
    def forward(ctx, logits, targets):
        everywhere = torch.ones_like(targets, dtype=torch.bool)
        exp, target = shifted_exp(logits, row_max(logits), targets, everywhere)
        sum_exp = exp.sum(dim=-1)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), targets, everywhere)
        return sum_exp.log() - target

    @staticmethod
    def backward(ctx, dloss):
        softmax, targets, everywhere = ctx.saved_tensors
        return softmax_grad_(softmax, targets, everywhere, dloss), None
