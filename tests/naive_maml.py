"""A deliberately naive MAML++ written from the spec's equations, for parity tests.

Independent of mamlpp's functional core: it loops over tasks and steps, uses plain
``torch.autograd.grad`` for inner gradients and PyTorch's own ``F.batch_norm`` (which updates
running statistics in place, unbiased variance, momentum 0.1) for per-step batch norm.
Parameters are plain dicts; nothing here is optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_forward(w, bn, x, step, running, use_running, blocks=4):
    """conv4 forward. ``w``: conv{b}.weight/bias, head.weight/bias; ``bn``: bn{b}.weight/bias
    ([S, C] or [C]); ``running``: bn{b}.running_mean/var tensors ([S, C] or [C]), updated in
    place by F.batch_norm when not ``use_running``."""
    h = x
    for b in range(blocks):
        h = F.conv2d(h, w[f"conv{b}.weight"], w[f"conv{b}.bias"], padding=1)
        gamma, beta = bn[f"bn{b}.weight"], bn[f"bn{b}.bias"]
        if gamma.dim() == 2:
            gamma, beta = gamma[step], beta[step]
        rm, rv = running[f"bn{b}.running_mean"], running[f"bn{b}.running_var"]
        if rm.dim() == 2:
            rm, rv = rm[step], rv[step]  # views: F.batch_norm's in-place update reaches the table
        h = F.batch_norm(h, rm, rv, gamma, beta, training=not use_running, momentum=0.1, eps=1e-5)
        h = F.leaky_relu(h, 0.01)
        h = F.max_pool2d(h, 2)
    return F.linear(h.flatten(1), w["head.weight"], w["head.bias"])


def naive_meta_loss(
    weights, bn, running, lrs, tasks, steps, msl_weights=None, second_order=True, reduction="mean"
):
    """Outer loss over ``tasks`` (list of (sx, sy, qx, qy)). ``lrs``: {name: tensor [S]}.
    ``running`` is updated in place, task by task and pass by pass, as the reference does."""
    total = 0.0
    for sx, sy, qx, qy in tasks:
        fast = dict(weights)
        task_loss = 0.0
        for i in range(steps):
            support_loss = F.cross_entropy(naive_forward(fast, bn, sx, i, running, False), sy)
            names = list(fast)
            grads = torch.autograd.grad(
                support_loss,
                [fast[n] for n in names],
                create_graph=second_order,
                retain_graph=True,
            )
            if not second_order:
                grads = [g.detach() for g in grads]
            fast = {n: fast[n] - lrs[n][i] * g for n, g in zip(names, grads, strict=True)}
            if msl_weights is not None:
                target = F.cross_entropy(naive_forward(fast, bn, qx, i, running, False), qy)
                task_loss = task_loss + msl_weights[i] * target
        if msl_weights is None:
            task_loss = F.cross_entropy(naive_forward(fast, bn, qx, steps - 1, running, False), qy)
        total = total + task_loss
    return total / len(tasks) if reduction == "mean" else total


def naive_predict(weights, bn, running, lrs, sx, sy, qx, steps, use_running):
    """Evaluation of one task: first-order adaptation, logits from theta_S at BN step S-1.
    Works on copies of the running statistics, so nothing outside changes."""
    running = {k: v.clone() for k, v in running.items()}
    fast = {n: t.detach().requires_grad_() for n, t in weights.items()}
    for i in range(steps):
        loss = F.cross_entropy(naive_forward(fast, bn, sx, i, running, use_running), sy)
        names = list(fast)
        grads = torch.autograd.grad(loss, [fast[n] for n in names])
        fast = {
            n: (fast[n] - lrs[n][i] * g).detach().requires_grad_()
            for n, g in zip(names, grads, strict=True)
        }
    with torch.no_grad():
        return naive_forward(fast, bn, qx, steps - 1, running, use_running)
