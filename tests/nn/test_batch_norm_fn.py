"""The hand-written batch-norm double backward against finite differences and PyTorch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mamlpp.nn.batch_norm_fn import batch_norm_train


def _inputs(seed=0, shape=(3, 2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
    gamma = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_()
    return x, gamma, beta


def _y(x, gamma, beta):
    return batch_norm_train(x, gamma, beta)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_first_and_second_derivatives_match_finite_differences(seed):
    inputs = _inputs(seed)
    assert gradcheck(_y, inputs)
    assert gradgradcheck(_y, inputs)


def test_values_statistics_and_double_backward_equal_pytorch_batch_norm():
    x, gamma, beta = _inputs(2, shape=(5, 3, 6, 6))
    y, mean, var = batch_norm_train(x, gamma, beta)
    expected = F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))
    assert not mean.requires_grad and not var.requires_grad

    upstream = torch.sin(torch.arange(x.numel(), dtype=torch.float64)).view_as(x)

    def second_order(norm):
        out = F.leaky_relu(norm(x, gamma, beta), 0.01)
        gx, gg, gb = torch.autograd.grad(
            (out * upstream).sum(), (x, gamma, beta), create_graph=True
        )
        outer = (gx**2).sum() + (gg * torch.arange(3.0, dtype=x.dtype)).sum() + gb.sum() ** 2
        return torch.autograd.grad(outer, (x, gamma, beta))

    ours = second_order(_y)
    theirs = second_order(
        lambda a, b, c: F.batch_norm(a, None, None, b, c, training=True, eps=1e-5)
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
