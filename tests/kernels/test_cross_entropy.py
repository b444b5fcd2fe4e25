"""axon.kernels.cross_entropy against torch's own cross-entropy and autograd, on one vocabulary slice."""

import torch
import torch.nn.functional as F

from axon.kernels.cross_entropy import row_max, shifted_exp, softmax_grad_


def test_local_cross_entropy_matches_torch():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(37, 211, generator=generator) * 5
    targets = torch.randint(0, 211, (37,), generator=generator)
    dloss = torch.rand(37, generator=generator) + 0.5
    everywhere = torch.ones(37, dtype=torch.bool)

    exp, target = shifted_exp(logits, row_max(logits), targets, everywhere)
    sum_exp = exp.sum(dim=-1)
    loss = sum_exp.log() - target
    grad = softmax_grad_(exp.div_(sum_exp.unsqueeze(-1)), targets, everywhere, dloss)

    leaf = logits.clone().requires_grad_()
    want = F.cross_entropy(leaf, targets, reduction="none")
    (want * dloss).sum().backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-6, atol=1e-7)


def test_targets_off_the_slice_take_no_logit_and_no_one_hot():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    local, inside = torch.tensor([2, 0]), torch.tensor([True, False])
    exp, target = shifted_exp(logits, row_max(logits), local, inside)
    assert target.tolist() == [0.0, 0.0]  # 3 - max 3 on the slice; the second token's target lies elsewhere
    softmax = exp / exp.sum(-1, keepdim=True)
    grad = softmax_grad_(softmax.clone(), local, inside, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(grad[0], softmax[0] - torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(grad[1], 2 * softmax[1])  # no one-hot subtracted off the slice


def test_slice_cross_entropy_autograd_matches_torch():
    from axon.kernels.cross_entropy import SliceCrossEntropy

    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(19, 64, generator=generator) * 3).requires_grad_()
    targets = torch.randint(0, 64, (19,), generator=generator)
    loss = SliceCrossEntropy.apply(logits, targets).mean()
    (grad,) = torch.autograd.grad(loss, logits)
    leaf = logits.detach().clone().requires_grad_()
    want = F.cross_entropy(leaf, targets)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-6, atol=1e-8)


def test_softmax_grad_equals_the_boolean_indexing_formula_bitwise():
    generator = torch.Generator().manual_seed(7)
    softmax = torch.rand(53, 97, generator=generator).softmax(-1)
    softmax[0, :] = 0.0  # zeros keep their sign off the target
    local = torch.randint(0, 97, (53,), generator=generator)
    inside = torch.rand(53, generator=generator) < 0.6
    local = local.masked_fill(~inside, 0)
    dloss = torch.randn(53, generator=generator)

    want = softmax.clone()  # the formula softmax_grad_ used before: boolean indexing, a nonzero
    rows = torch.arange(53)
    want[rows[inside], local[inside]] -= 1.0
    want.mul_(dloss.unsqueeze(-1))
    got = softmax_grad_(softmax.clone(), local, inside, dloss)
    assert torch.equal(got, want)
    assert torch.equal(got.signbit(), want.signbit())
