"""THE algorithm, written once: S inner steps, multi-step target losses, LSLR, first/second order.

Every tensor carries a leading task dimension B, and the network is called through a *task-batched
forward* (the contract every execution implements, see :mod:`mamlpp.core.executions`)::

    forward(params {name: [B, ...]}, x [B, n, ...], step, running, stats_rows)
        -> (logits [B, n, N], stats)

with ``stats = {bn: (batch mean [B, C], unbiased batch var [B, C])}`` (returned, never written in
place), ``running`` the stored statistics to normalise with instead (evaluation in
``bn_mode="per_step"``) and ``stats_rows`` the number of leading examples whose batch statistics
normalise all of them (``bn_mode="support"``, see :func:`query_forward`). Grouped-convolution
Conv4, a per-task loop, vmap and any ``nn.Module`` are implementations of that contract, not
copies of this file.

One meta-batch, S inner steps ("How to train your MAML", Antoniou et al., ICLR 2019, sections 3
and 4; ``docs/algorithm.md``)::

  theta_0 = meta-parameters (shared by all tasks: expanded views, gradients sum back)
  for i in 0..S-1:
      g = d/dtheta_i sum_b CE_b(f(support_x; theta_i, BN step i))  (graph kept only if 2nd order)
      theta_{i+1} = theta_i - alpha[:, i] * g                       (alpha: LSLR table, per tensor)
      if MSL active: loss_b += w_i * CE_b(f(query_x; theta_{i+1}, BN step i))
  if MSL inactive: loss_b = CE_b(f(query_x; theta_S, BN step S-1))

(in bn_mode="support" every f(query_x; ...) normalises with the support set's statistics under
the same weights: :func:`query_forward`)

Tasks share no fast weights, so each task's slice of the gradient of the summed support losses is
its own inner gradient. Plain ``torch.autograd.grad`` (not ``torch.func.grad``) keeps activation
checkpointing of inner steps and CUDA-graph capture possible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mamlpp.core.types import BatchNormContext, BatchStats, TaskForward


@dataclass(frozen=True)
class InnerLoopPlan:
    """Static settings of one call: everything that is Python control flow, not tensors."""

    num_steps: int
    adapted_names: tuple[str, ...]
    second_order: bool
    # MSL weights w_0..w_{S-1} (floats, or a [S] tensor so that a captured CUDA graph can take
    # new values each epoch), or None: only the final step's target loss (weight 1).
    step_weights: tuple[float, ...] | Tensor | None
    # Normalise with stored running statistics (evaluation in bn_mode="per_step").
    use_running_stats: bool = False
    # Tensors whose exact gradient is 0 whenever batch statistics normalise (a bias that batch
    # norm subtracts again): in such passes their inner and outer gradients are exactly 0
    # instead of rounding noise (see _expand and adapt).
    dead_names: frozenset[str] = frozenset()
    # Every target/prediction pass normalises the query with the support set's batch statistics
    # (bn_mode="support", training and evaluation; see query_forward).
    bn_from_support: bool = False

    def stat_rows(self) -> list[int]:
        """BN step of each forward pass whose batch statistics are returned, in pass order:
        support_0, (target_0 under MSL), support_1, ..., (the final target pass without MSL).
        The target pass after step i (theta_{i+1}) uses BN row i."""
        rows = []
        for i in range(self.num_steps):
            rows.append(i)
            if self.step_weights is not None:
                rows.append(i)
        if self.step_weights is None:
            rows.append(self.num_steps - 1)
        return rows


def weighted_target_loss(plan: InnerLoopPlan, target_losses: list[Tensor]) -> Tensor:
    """Outer loss from the target losses ``[B]`` each: the MSL-weighted sum, or the final one."""
    if plan.step_weights is None:
        return target_losses[0]
    return sum(w * l for w, l in zip(plan.step_weights, target_losses, strict=True))


def stack_pass_stats(
    plan: InnerLoopPlan,
    support_stats: list[BatchStats],
    target_stats: list[BatchStats],
    bn_names: Sequence[str],
) -> BatchStats:
    """Each BN layer's (mean, var) of every pass stacked as ``[B, P, C]`` in ``stat_rows`` order."""
    passes = []
    for i in range(plan.num_steps):
        passes.append(support_stats[i])
        if plan.step_weights is not None:
            passes.append(target_stats[i])
    if plan.step_weights is None:
        passes.append(target_stats[0])

    def stacked(bn: str, j: int) -> Tensor:  # j = 0: mean, 1: var -> [B, P, C]
        return torch.stack([p[bn][j] for p in passes], dim=1)

    return {bn: (stacked(bn, 0), stacked(bn, 1)) for bn in bn_names}


def query_forward(
    forward: TaskForward,
    plan: InnerLoopPlan,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    query_x: Tensor,
    step: int,
    running: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, BatchStats]:
    """A target (or prediction) pass: logits ``[B, m, N]`` of ``query_x [B, m, ...]``.

    With ``plan.bn_from_support`` (``bn_mode="support"``) the query images are appended to a
    support pass with the same weights and BN row, ``[support_x, query_x]`` along the example
    dimension, and every batch-norm layer normalises all of them with the statistics of the
    support rows alone (differentiably); the support rows' logits are dropped. A query's logits
    then depend on the support set and that query alone, never on the other queries. The
    statistics returned are the support rows'. Otherwise the query batch's own statistics (or
    ``running``) normalise, as in the other modes.
    """
    if not plan.bn_from_support:
        return forward(params, query_x, BatchNormContext(step, running))
    n = support_x.shape[1]
    both = torch.cat([support_x, query_x], dim=1)
    logits, stats = forward(params, both, BatchNormContext(step, running, stats_rows=n))
    return logits[:, n:], stats


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each task: logits ``[B, n, ways]``, labels ``[B, n]`` -> ``[B]``."""
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return flat.view(labels.shape).mean(1)


def per_task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)  # [B]


def _expand(
    params: Mapping[str, Tensor], num_tasks: int, dead: frozenset[str] = frozenset()
) -> dict[str, Tensor]:
    """Give every shared tensor a task dimension (a view: no copy, gradients sum back).

    A ``dead`` tensor (exact gradient 0) enters as ``t.detach() + 0 * t``: the same values,
    and a gradient of exactly 0 (what backward would return for it is rounding noise, which
    Adam turns into full-size steps)."""
    return {
        n: (_silenced(t) if n in dead else t).expand(num_tasks, *t.shape) for n, t in params.items()
    }


def _silenced(t: Tensor) -> Tensor:
    if not (t.requires_grad and torch.is_grad_enabled()):
        return t
    return t.detach() + 0.0 * t


def adapt(
    forward: TaskForward,
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

    When batch statistics normalise (no ``running``), the ``plan.dead_names`` among the adapted
    tensors take no inner step (their exact inner gradient is 0: the fast weight stays the
    meta-parameter, and its inner rates get a meta-gradient of exactly 0), and every dead tensor
    gets an outer gradient of exactly 0.
    """
    num_tasks = support_x.shape[0]
    names = plan.adapted_names
    dead = plan.dead_names if running is None else frozenset()
    live = [j for j, n in enumerate(names) if n not in dead]
    batched = _expand(params, num_tasks, dead)
    fast = [batched[n] for n in names]
    fixed = {n: t for n, t in batched.items() if n not in names}
    support_losses, support_stats = [], []
    # Second order only where an outer graph is being built (not under no_grad, as in
    # evaluation or finite differences): a view made under no_grad claims requires_grad but is
    # not connected to any graph.
    second_order = plan.second_order and torch.is_grad_enabled()

    for i in range(plan.num_steps):

        def inner_step(
            *fast_values: Tensor, step: int = i
        ) -> tuple[tuple[Tensor, ...], Tensor, BatchStats]:
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
                    BatchNormContext(step, running),
                )
                losses = per_task_cross_entropy(logits, support_y)  # [B]
                grads = (
                    torch.autograd.grad(
                        losses.sum(), [inputs[j] for j in live], create_graph=second_order
                    )
                    if live
                    else ()
                )
            step_of = dict(zip(live, grads, strict=True))
            new = tuple(
                v - inner_lrs[j, step].to(v.dtype) * step_of[j] if j in step_of else v
                for j, v in enumerate(fast_values)
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


def meta_loss(
    forward: TaskForward,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    plan: InnerLoopPlan,
    bn_names: Sequence[str],
    checkpoint_steps: bool = False,
) -> tuple[Tensor, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Outer loss of each task ``[B]`` (training semantics: batch statistics everywhere),
    metrics ``{k: [B, ...]}`` (``step_losses``/``step_accuracies`` ``[B, T]`` for the T target
    passes, ``support_losses [B, S]``) and statistics ``{bn: (mean [B, P, C], var [B, P, C])}``
    in ``plan.stat_rows()`` order."""
    num_tasks = support_x.shape[0]
    target_losses: list[Tensor] = []
    target_accs: list[Tensor] = []
    target_stats: list[dict[str, tuple[Tensor, Tensor]]] = []
    shared = _expand(params, num_tasks, plan.dead_names)  # batch statistics in every pass

    def target_pass(step: int, fast: dict[str, Tensor]) -> None:
        def run(*fast_values: Tensor) -> tuple[Tensor, Tensor, BatchStats]:
            fast_now = dict(zip(fast, fast_values, strict=True))
            logits, stats = query_forward(
                forward, plan, {**shared, **fast_now}, support_x, query_x, step
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

    fast, support_losses, support_stats = adapt(
        forward,
        params,
        inner_lrs,
        support_x,
        support_y,
        plan,
        on_step=target_pass if plan.step_weights is not None else None,
        checkpoint_steps=checkpoint_steps,
    )
    if plan.step_weights is None:
        target_pass(plan.num_steps - 1, fast)
    losses = weighted_target_loss(plan, target_losses)  # [B]
    stats = stack_pass_stats(plan, support_stats, target_stats, bn_names)  # [B, P, C]
    metrics = {
        "step_losses": torch.stack([t.detach() for t in target_losses], dim=1),  # [B, T]
        "step_accuracies": torch.stack(target_accs, dim=1),
        "support_losses": support_losses,  # [B, S]
    }
    return losses, metrics, stats


def predict(
    forward: TaskForward,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None,
) -> Tensor:
    """Evaluation for all tasks: logits ``[B, m, ways]`` from theta_S at BN step S-1."""
    fast, _, _ = adapt(forward, params, inner_lrs, support_x, support_y, plan, running)
    shared = _expand(params, support_x.shape[0])
    logits, _ = query_forward(
        forward, plan, {**shared, **fast}, support_x, query_x, plan.num_steps - 1, running
    )
    return logits
