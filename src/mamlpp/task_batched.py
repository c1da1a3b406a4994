"""The whole meta-batch as one computation (the default execution path).

Same mathematics as :mod:`mamlpp.inner_loop` (one task at a time), but every tensor carries a
leading task dimension B and the backbone's ``task_batched_forward`` runs all tasks in one call
(tasks as channel groups: one grouped convolution per layer, native batch norm). Inner gradients
use plain ``torch.autograd.grad`` on the sum of the per-task support losses: tasks share no
fast weights, so each task's slice of the gradient is its own inner gradient.

Why not vmap alone: plain autograd here also supports activation checkpointing of inner steps
(``torch.func.grad`` refuses saved-tensor hooks) and CUDA-graph capture, and avoids vmap's
per-call reshapes. Outputs have the same structure as ``vmap(task_meta_loss)`` so the learner
treats the paths alike, and tests compare them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .inner_loop import InnerLoopPlan, stack_pass_stats, target_forward, weighted_target_loss

# task_batched_forward(params [B, ...], x [B, n, C, H, W], step, running) -> (logits, stats)
BatchedForwardFn = Callable[..., tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]]


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each task: logits ``[B, n, ways]``, labels ``[B, n]`` -> ``[B]``."""
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return flat.view(labels.shape).mean(1)


def per_task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)  # [B]


def _expand(params: Mapping[str, Tensor], num_tasks: int) -> dict[str, Tensor]:
    """Give every shared tensor a task dimension (a view: no copy, gradients sum back)."""
    return {n: t.expand(num_tasks, *t.shape) for n, t in params.items()}


def batched_adapt(
    forward: BatchedForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None = None,
    on_step: Callable[[int, dict[str, Tensor]], None] | None = None,
    checkpoint_steps: bool = False,
) -> tuple[dict[str, Tensor], Tensor, list[dict[str, tuple[Tensor, Tensor]]]]:
    """S inner steps for all B tasks of ``support_x [B, n, C, H, W]``.

    ``params``: shared tensors by name (no task dim); ``inner_lrs [len(adapted_names), S]``.
    Returns fast weights ``{name: [B, ...]}``, support losses ``[B, S]`` and each support
    pass's statistics ``{bn: (mean [B, C], var [B, C])}``.
    With ``checkpoint_steps`` each step's activations are recomputed during the outer backward
    instead of being stored (memory ~ one step instead of S steps).
    """
    num_tasks = support_x.shape[0]
    names = plan.adapted_names
    running = running if plan.support_norm == "running" else None
    extra = plan.running_kwargs() if running is not None else {}
    batched = _expand(params, num_tasks)
    fast = [batched[n] for n in names]
    fixed = {n: t for n, t in batched.items() if n not in names}
    support_losses, support_stats = [], []
    # Second order only where an outer graph is being built (not under no_grad, as in
    # evaluation or finite differences): a view made under no_grad claims requires_grad but is
    # not connected to any graph.
    second_order = plan.second_order and torch.is_grad_enabled()

    for i in range(plan.num_steps):

        def inner_step(*fast_values: Tensor, step: int = i):
            with torch.enable_grad():
                if second_order:
                    inputs = [
                        v if v.requires_grad else v.detach().requires_grad_() for v in fast_values
                    ]
                    context = fixed
                else:
                    # First order: the inner gradient is a constant of the outer derivative.
                    inputs = [v.detach().requires_grad_() for v in fast_values]
                    context = {n: t.detach() for n, t in fixed.items()}
                logits, stats = forward(
                    {**context, **dict(zip(names, inputs, strict=True))},
                    support_x,
                    step,
                    running,
                    **extra,
                )
                losses = per_task_cross_entropy(logits, support_y)  # [B]
                grads = torch.autograd.grad(losses.sum(), inputs, create_graph=second_order)
            new = tuple(
                v - inner_lrs[j, step].to(v.dtype) * g
                for j, (v, g) in enumerate(zip(fast_values, grads, strict=True))
            )
            return new, losses.detach(), stats

        if checkpoint_steps and torch.is_grad_enabled():
            new_fast, losses, stats = checkpoint(inner_step, *fast, use_reentrant=False)
        else:
            new_fast, losses, stats = inner_step(*fast)
        fast = list(new_fast)
        support_losses.append(losses)
        support_stats.append(stats)
        if on_step is not None:
            on_step(i, dict(zip(names, fast, strict=True)))
    fast_dict = dict(zip(names, fast, strict=True))
    return fast_dict, torch.stack(support_losses, dim=1), support_stats


def batched_meta_loss(
    forward: BatchedForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    plan: InnerLoopPlan,
    bn_names: Sequence[str],
    checkpoint_steps: bool = False,
    running: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Outer loss of each task ``[B]``, metrics ``{k: [B, ...]}`` and statistics
    ``{bn: (mean [B, P, C], var [B, P, C])}`` in ``plan.stat_rows`` order: the same structure
    as ``vmap(inner_loop.task_meta_loss)``. ``running``: the stored statistics, read by the
    passes whose plan norm is "running"."""
    num_tasks = support_x.shape[0]
    target_losses: list[Tensor] = []
    target_accs: list[Tensor] = []
    target_stats: list[dict[str, tuple[Tensor, Tensor]]] = []
    shared = _expand(params, num_tasks)

    def target_pass(step: int, fast: dict[str, Tensor]) -> None:
        def run(*fast_values: Tensor):
            fast_now = dict(zip(fast, fast_values, strict=True))
            logits, stats = target_forward(
                forward, {**shared, **fast_now}, plan, support_x, query_x, step, running
            )
            return (
                per_task_cross_entropy(logits, query_y),
                per_task_accuracy(logits.detach(), query_y),
                stats,
            )

        if checkpoint_steps and torch.is_grad_enabled():
            loss, acc, stats = checkpoint(run, *fast.values(), use_reentrant=False)
        else:
            loss, acc, stats = run(*fast.values())
        target_losses.append(loss)
        target_accs.append(acc)
        target_stats.append(stats)

    fast, support_losses, support_stats = batched_adapt(
        forward,
        params,
        inner_lrs,
        support_x,
        support_y,
        plan,
        running,
        on_step=target_pass if plan.step_weights is not None else None,
        checkpoint_steps=checkpoint_steps,
    )
    if plan.step_weights is None:
        target_pass(plan.num_steps - 1, fast)
    losses = weighted_target_loss(plan, target_losses)  # [B]
    stats = stack_pass_stats(plan, support_stats, target_stats, bn_names, dim=1)  # [B, P, C]
    metrics = {
        "step_losses": torch.stack([t.detach() for t in target_losses], dim=1),  # [B, T]
        "step_accuracies": torch.stack(target_accs, dim=1),
        "support_losses": support_losses,  # [B, S]
    }
    return losses, metrics, stats


def batched_predict(
    forward: BatchedForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None,
) -> Tensor:
    """Evaluation for all tasks: logits ``[B, m, ways]`` from theta_S at BN step S-1."""
    fast, _, _ = batched_adapt(forward, params, inner_lrs, support_x, support_y, plan, running)
    shared = _expand(params, support_x.shape[0])
    logits, _ = target_forward(
        forward, {**shared, **fast}, plan, support_x, query_x, plan.num_steps - 1, running
    )
    return logits
