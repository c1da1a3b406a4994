"""Training-mode batch norm with a hand-written, cheap double backward.

Second-order MAML differentiates through the inner loop's gradients, so every batch-norm layer is
differentiated twice. PyTorch's generic double backward of batch norm builds its result from
dozens of full-size elementwise operations; on a CPU that memory traffic, not the convolutions,
dominates a meta-iteration. Here the first backward is an autograd Function whose own backward
(the double backward) is written out per channel: each full-size output is one linear
combination of at most three full-size tensors with per-channel coefficients.

Notation per channel (sums over the N = n*H*W positions of that channel):
    xh = (x - mu) * r, r = 1/sqrt(var + eps)          (forward:  y = gamma * xh + beta)
    A = sum(g), B = sum(g * xh)                         (first backward, upstream g = dL/dy)
    gx = gamma * r * (g - A/N - xh * B/N), ggamma = B, gbeta = A
Double backward, upstream u = d/dgx, ug = d/dggamma, ub = d/dgbeta (U = sum u, Ux = sum u*xh,
Ug = sum u*g):
    d/dg     = gamma*r*(u - U/N - xh*Ux/N) + ug*xh + ub
    d/dgamma = r*(Ug - A*U/N - B*Ux/N)
    d/dx     = c_u*u + c_g*g + c_x*xh + c_0 with
        c_u = -gamma r^2 B/N,  c_g = -gamma r^2 Ux/N + ug r,
        c_x = gamma r^2/N (3 B Ux/N - Ug + A U/N) - ug r B/N,
        c_0 = gamma r^2 (B U + A Ux)/N^2 - ug r A/N
The tests check both derivatives against finite differences (gradcheck, gradgradcheck) and the
whole meta-gradient against PyTorch's own batch norm.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# What a batch-norm Function's backward returns: gradients of (x, gamma, beta), None for eps.
Grads = tuple[Tensor | None, Tensor | None, Tensor | None, None]


class FunctionContext(Protocol):
    """What the batch-norm Functions use of autograd's ``ctx`` (torch types it ``Any``)."""

    saved_tensors: tuple[Tensor, ...]
    eps: float

    def save_for_backward(self, *tensors: Tensor) -> None: ...

    def mark_non_differentiable(self, *tensors: Tensor) -> None: ...

    def set_materialize_grads(self, value: bool) -> None: ...


def native_train_forward(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch's fused training-mode kernel (statistics and normalisation in one pass over
    ``x [n, C, *]``): ``(y, mean [C], biased var [C], rstd [C])``."""
    y, mean, rstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
    return y, mean, rstd.pow(-2) - eps, rstd


def native_train_backward(
    grad_y: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch's fused first backward of :func:`native_train_forward`: ``(grad_x, grad_gamma =
    B = sum(g * xh) [C], grad_beta = A = sum(g) [C])``."""
    grad_x, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
        grad_y, x, gamma, None, None, mean, rstd, True, eps, [True, True, True]
    )
    return grad_x, grad_gamma, grad_beta


def _c(v: Tensor) -> Tensor:
    """A per-channel vector ``[C]`` shaped to broadcast over ``[n, C, H, W]``."""
    return v[:, None, None]


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(
        x: Tensor, gamma: Tensor, beta: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return native_train_forward(x, gamma, beta, eps)

    @staticmethod
    def setup_context(
        ctx: FunctionContext, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
    ) -> None:
        x, gamma, _, eps = inputs
        _, mean, var, rstd = output
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var, rstd)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: FunctionContext,
        grad_y: Tensor | None,
        _grad_mean: Tensor | None,
        _grad_var: Tensor | None,
        _grad_rstd: Tensor | None,
    ) -> Grads:
        x, gamma, mean, rstd = ctx.saved_tensors
        if grad_y is None:
            return None, None, None, None
        # A Function, so that the inner gradient's graph (second order) has a cheap backward.
        grad_x, grad_gamma, grad_beta = _BatchNormTrainBackward.apply(
            x, gamma, grad_y, mean, rstd, ctx.eps
        )
        return grad_x, grad_gamma, grad_beta, None


class _BatchNormTrainBackward(torch.autograd.Function):
    @staticmethod
    def forward(
        x: Tensor, gamma: Tensor, grad_y: Tensor, mean: Tensor, rstd: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        # grad_x, B = sum(g * xh) (= grad gamma), A = sum(g) (= grad beta).
        return native_train_backward(grad_y, x, gamma, mean, rstd, eps)

    @staticmethod
    def setup_context(
        ctx: FunctionContext, inputs: tuple[Any, ...], output: tuple[Tensor, ...]
    ) -> None:
        x, gamma, grad_y, mean, rstd, _ = inputs
        _, b, a = output
        ctx.save_for_backward(x, gamma, grad_y, mean, rstd, a, b)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionContext, u: Tensor | None, u_gamma: Tensor | None, u_beta: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        x, gamma, g, mean, r, a, b = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        xh = torch.addcmul(_c(-mean * r), x, _c(r))  # [n, C, H, W], recomputed: one pass
        zeros = torch.zeros_like(gamma)
        u_gamma = zeros if u_gamma is None else u_gamma
        u_beta = zeros if u_beta is None else u_beta
        if u is None:
            big_u = big_ux = big_ug = zeros
        else:
            big_u = u.sum(dim=(0, 2, 3))
            big_ux = (u * xh).sum(dim=(0, 2, 3))
            big_ug = (u * g).sum(dim=(0, 2, 3))
        gr = gamma * r
        gr2 = gr * r
        # d/dg = gamma r (u - U/N - xh Ux/N) + ug xh + ub
        grad_g = _c(u_beta - gr * big_u / n) + xh * _c(u_gamma - gr * big_ux / n)
        if u is not None:
            grad_g.addcmul_(u, _c(gr))
        grad_gamma = r * (big_ug - a * big_u / n - b * big_ux / n)
        c_g = -gr2 * big_ux / n + u_gamma * r
        c_x = gr2 / n * (3 * b * big_ux / n - big_ug + a * big_u / n) - u_gamma * r * b / n
        c_0 = gr2 * (b * big_u + a * big_ux) / (n * n) - u_gamma * r * a / n
        grad_x = torch.addcmul(_c(c_0), xh, _c(c_x))
        grad_x.addcmul_(g, _c(c_g))
        if u is not None:
            grad_x.addcmul_(u, _c(-gr2 * b / n))
        return grad_x, grad_gamma, grad_g, None, None, None


def batch_norm_train(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm with batch statistics over dims (0, 2, 3) of ``x [n, C, H, W]``; ``gamma``,
    ``beta``: ``[C]``. Same values and derivatives as ``F.batch_norm(training=True)``.

    Returns ``(y, mean [C], biased var [C])``; the statistics carry no gradient."""
    y, mean, var, _ = _BatchNormTrain.apply(x, gamma, beta, eps)
    return y, mean, var
