"""THE algorithm, written once: S inner steps, multi-step query losses, LSLR, first/second order.

Every tensor carries a leading task dimension B, and the network is called through a *task-batched
forward* (the contract every execution implements, see :mod:`mamlpp.core.executions`)::

    forward(params {name: [B, ...]}, x [B, n, ...], bn: BatchNormContext)
        -> (logits [B, n, N], stats)

with ``stats = {bn: (batch mean [B, C], unbiased batch var [B, C])}`` (returned, never written in
place) and ``bn`` the inner step's batch-norm row, optionally the stored statistics to normalise
with (evaluation in ``bn_mode="per_step"``) and the number of leading examples whose batch
statistics normalise all of them (``bn_mode="support"``, see :func:`query_forward`).
Grouped-convolution Conv4, a per-task loop, vmap and any ``nn.Module`` are implementations of
that contract, not copies of this file.

Tasks share no fast weights, so each task's slice of the gradient of the summed support losses is
its own inner gradient. Plain ``torch.autograd.grad`` (not ``torch.func.grad``) keeps activation
checkpointing of inner steps and CUDA-graph capture possible: nothing here reads a tensor's value
on the host, and every branch is on static settings (:class:`InnerLoopPlan`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mamlpp.core.types import BatchNormContext, BatchStats, PassStats, TaskBatch, TaskForward

Result = TypeVar("Result")


@dataclass(frozen=True)
class InnerLoopPlan:
    """Static settings of one call: everything that is Python control flow, not tensors."""

    num_steps: int
    adapted_names: tuple[str, ...]
    second_order: bool
    # MSL weights w_0..w_{S-1} (floats, or a [S] tensor so that a captured CUDA graph can take
    # new values each epoch), or None: only the final step's query loss (weight 1).
    step_weights: tuple[float, ...] | Tensor | None
    # Normalise with stored running statistics (evaluation in bn_mode="per_step").
    use_running_stats: bool = False
    # Tensors whose exact gradient is 0 whenever batch statistics normalise (a bias that batch
    # norm subtracts again): in such passes their inner and outer gradients are exactly 0
    # instead of rounding noise (see _expand and inner_step).
    dead_names: frozenset[str] = frozenset()
    # Every query pass normalises the query with the support set's batch statistics
    # (bn_mode="support", training and evaluation; see query_forward).
    bn_from_support: bool = False


@dataclass
class PassLog:
    """Each forward pass's batch statistics with its BN row, recorded as the pass is made: the
    order of the passes is the order of the code that makes them, written once."""

    rows: list[int] = field(default_factory=list)
    stats: list[BatchStats] = field(default_factory=list)

    def record(self, row: int, stats: BatchStats) -> None:
        self.rows.append(row)
        self.stats.append(stats)

    def stacked(self, bn_names: Sequence[str]) -> PassStats:
        """Each BN layer's (mean, var) of every pass as ``[B, P, C]``, pass p of row ``rows[p]``."""

        def stacked(bn: str, j: int) -> Tensor:  # j = 0: mean, 1: var -> [B, P, C]
            return torch.stack([s[bn][j] for s in self.stats], dim=1)

        values = {bn: (stacked(bn, 0), stacked(bn, 1)) for bn in bn_names}
        return PassStats(values, tuple(self.rows))


def meta_loss(
    forward: TaskForward,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    batch: TaskBatch,
    plan: InnerLoopPlan,
    bn_names: Sequence[str],
    checkpoint_steps: bool = False,
) -> tuple[Tensor, dict[str, Tensor], PassStats]:
    """Outer loss of each task of one meta-batch (training semantics: batch statistics in every
    pass; "How to train your MAML", Antoniou et al., ICLR 2019, sections 3 and 4;
    ``docs/algorithm.md``)::

      theta_0 = meta-parameters (shared by all tasks: expanded views, gradients sum back)
      for i in 0..S-1:
          g = d/dtheta_i sum_b CE_b(f(support_x; theta_i, BN step i))  (graph kept if 2nd order)
          theta_{i+1} = theta_i - alpha[:, i] * g                       (alpha: LSLR, per tensor)
          if MSL active: loss_b += w_i * CE_b(f(query_x; theta_{i+1}, BN step i))
      if MSL inactive: loss_b = CE_b(f(query_x; theta_S, BN step S-1))

    (in ``bn_mode="support"`` every f(query_x; ...) normalises with the support set's statistics
    under the same weights: :func:`query_forward`). Each pass records its BN row and batch
    statistics as it is made (:class:`PassLog`).

    Returns the losses ``[B]``; metrics ``{k: [B, ...]}``: ``step_losses`` and
    ``step_accuracies`` ``[B, L]`` for the L query passes (L = S under MSL, else 1),
    ``support_losses [B, S]``; and the statistics of every pass (:class:`PassStats`, ``[B, P, C]``).
    With ``checkpoint_steps`` each pass's activations are recomputed in the outer backward
    instead of being stored (memory ~ one step instead of S).
    """
    msl = plan.step_weights is not None
    passes = PassLog()
    support_losses: list[Tensor] = []
    query_losses: list[Tensor] = []
    query_accuracies: list[Tensor] = []

    num_tasks = batch.support_x.shape[0]
    # The query passes see the tensors that the inner loop does not adapt through views of
    # their own, so that their gradients reach the meta-parameters in the same order as in
    # earlier releases (bitwise the same meta-gradients).
    query_views = _expand(params, num_tasks, plan.dead_names)

    def query_loss(theta: dict[str, Tensor], step: int) -> None:  # CE_b(f(query_x; theta, step))
        weights = {**query_views, **{n: theta[n] for n in plan.adapted_names}}
        loss, accuracy, stats = query_pass(forward, plan, weights, batch, step, checkpoint_steps)
        passes.record(step, stats)
        query_losses.append(loss)
        query_accuracies.append(accuracy)

    theta = _expand(params, num_tasks, plan.dead_names)  # theta_0
    for i in range(plan.num_steps):
        bn = BatchNormContext(i)
        theta, loss, stats = inner_step(  # g, then theta_{i+1} = theta_i - alpha[:, i] * g
            forward, plan, theta, inner_lrs, batch.support_x, batch.support_y, bn, checkpoint_steps
        )
        passes.record(i, stats)
        support_losses.append(loss)
        if msl:  # loss_b += w_i * CE_b(f(query_x; theta_{i+1}, BN step i))
            query_loss(theta, i)
    if not msl:  # loss_b = CE_b(f(query_x; theta_S, BN step S-1))
        query_loss(theta, plan.num_steps - 1)

    metrics = {
        "step_losses": torch.stack([q.detach() for q in query_losses], dim=1),  # [B, L]
        "step_accuracies": torch.stack(query_accuracies, dim=1),  # [B, L]
        "support_losses": torch.stack(support_losses, dim=1),  # [B, S]
    }
    return weighted_query_loss(plan, query_losses), metrics, passes.stacked(bn_names)


def adapt(
    forward: TaskForward,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """theta_S of every task of ``support_x [B, n, ...]``: S inner steps (the loop of
    :func:`meta_loss` without query passes). ``params``: shared tensors by name (no task dim);
    ``inner_lrs [len(adapted_names), S]``; ``running``: stored statistics to normalise with.
    Returns every tensor by name with a task dimension, ``{name: [B, ...]}``."""
    # Dead tensors are silenced only where batch statistics normalise (with stored statistics
    # the biases before batch norm are live).
    dead = plan.dead_names if running is None else frozenset()
    theta = _expand(params, support_x.shape[0], dead)  # theta_0
    for i in range(plan.num_steps):
        bn = BatchNormContext(i, running)
        theta, _, _ = inner_step(forward, plan, theta, inner_lrs, support_x, support_y, bn)
    return theta


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
    """Evaluation for all tasks: logits ``[B, m, ways]`` of ``query_x`` from theta_S at BN
    step S-1."""
    theta = adapt(forward, params, inner_lrs, support_x, support_y, plan, running)
    bn = BatchNormContext(plan.num_steps - 1, running)
    logits, _ = query_forward(forward, plan, theta, support_x, query_x, bn)
    return logits


def inner_step(
    forward: TaskForward,
    plan: InnerLoopPlan,
    theta: dict[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    bn: BatchNormContext,
    checkpoint_steps: bool = False,
) -> tuple[dict[str, Tensor], Tensor, BatchStats]:
    """One inner step of every task, i = ``bn.step``: ``theta_{i+1} = theta_i - alpha[:, i] * g``
    with ``g`` the gradient of the summed support losses at theta_i.

    ``theta``: every tensor by name, ``[B, ...]``. Returns theta_{i+1} (the adapted tensors
    moved, the others as they were), the support losses ``[B]`` (detached) and the pass's
    statistics. The graph of ``g`` is kept only in second order, and only where an outer graph
    is being built (not under no_grad, as in evaluation or finite differences: a view made under
    no_grad claims requires_grad but is not connected to any graph).

    When batch statistics normalise (no ``bn.running``), the ``plan.dead_names`` among the
    adapted tensors take no step (their exact inner gradient is 0: the fast weight stays the
    meta-parameter, and its inner rates get a meta-gradient of exactly 0).
    """
    names = plan.adapted_names
    dead = plan.dead_names if bn.running is None else frozenset()
    live = [j for j, n in enumerate(names) if n not in dead]
    fixed = {n: t for n, t in theta.items() if n not in names}
    second_order = plan.second_order and torch.is_grad_enabled()

    def step(*fast: Tensor) -> tuple[tuple[Tensor, ...], Tensor, BatchStats]:
        with torch.enable_grad():
            if second_order:
                inputs = [v if v.requires_grad else v.detach().requires_grad_() for v in fast]
                context = fixed
            else:  # first order: the inner gradient is a constant of the outer derivative
                inputs = [v.detach().requires_grad_() for v in fast]
                context = {n: t.detach() for n, t in fixed.items()}
            weights = {**context, **dict(zip(names, inputs, strict=True))}
            logits, stats = forward(weights, support_x, bn)
            losses = per_task_cross_entropy(logits, support_y)  # [B]
            live_inputs = [inputs[j] for j in live]
            grads = (
                torch.autograd.grad(losses.sum(), live_inputs, create_graph=second_order)
                if live
                else ()
            )
        g = dict(zip(live, grads, strict=True))
        moved = tuple(
            v - inner_lrs[j, bn.step].to(v.dtype) * g[j] if j in g else v
            for j, v in enumerate(fast)
        )
        return moved, losses.detach(), stats

    moved, losses, stats = _run(step, [theta[n] for n in names], checkpoint_steps)
    return {**fixed, **dict(zip(names, moved, strict=True))}, losses, stats


def query_pass(
    forward: TaskForward,
    plan: InnerLoopPlan,
    theta: dict[str, Tensor],
    batch: TaskBatch,
    step: int,
    checkpoint_steps: bool = False,
) -> tuple[Tensor, Tensor, BatchStats]:
    """``CE_b(f(query_x; theta, BN step))`` of every task: query losses ``[B]``, accuracies
    ``[B]`` (detached) and the pass's statistics."""
    names = plan.adapted_names
    fixed = {n: t for n, t in theta.items() if n not in names}

    def run(*fast: Tensor) -> tuple[Tensor, Tensor, BatchStats]:
        weights = {**fixed, **dict(zip(names, fast, strict=True))}
        bn = BatchNormContext(step)
        logits, stats = query_forward(forward, plan, weights, batch.support_x, batch.query_x, bn)
        return (
            per_task_cross_entropy(logits, batch.query_y),
            per_task_accuracy(logits.detach(), batch.query_y),
            stats,
        )

    return _run(run, [theta[n] for n in names], checkpoint_steps)


def query_forward(
    forward: TaskForward,
    plan: InnerLoopPlan,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    query_x: Tensor,
    bn: BatchNormContext,
) -> tuple[Tensor, BatchStats]:
    """A query (training or prediction) pass: logits ``[B, m, N]`` of ``query_x [B, m, ...]``.

    With ``plan.bn_from_support`` (``bn_mode="support"``) the query examples are appended to a
    support pass with the same weights and BN row, ``[support_x, query_x]`` along the example
    dimension, and every batch-norm layer normalises all of them with the statistics of the
    support rows alone (differentiably); the support rows' logits are dropped. A query's logits
    then depend on the support set and that query alone, never on the other queries. The
    statistics returned are the support rows'. Otherwise the query batch's own statistics (or
    ``bn.running``) normalise, as in the other modes.
    """
    if not plan.bn_from_support:
        return forward(params, query_x, bn)
    n = support_x.shape[1]
    both = torch.cat([support_x, query_x], dim=1)
    logits, stats = forward(params, both, replace(bn, stats_rows=n))
    return logits[:, n:], stats


def weighted_query_loss(plan: InnerLoopPlan, query_losses: list[Tensor]) -> Tensor:
    """Outer loss from the query losses ``[B]`` each: the MSL-weighted sum, or the final one."""
    if plan.step_weights is None:
        return query_losses[0]
    return sum(w * l for w, l in zip(plan.step_weights, query_losses, strict=True))


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each task: logits ``[B, n, ways]``, labels ``[B, n]`` -> ``[B]``."""
    flat = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return flat.view(labels.shape).mean(1)


def per_task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)  # [B]


def _run(fn: Callable[..., Result], inputs: list[Tensor], checkpointed: bool) -> Result:
    """``fn(*inputs)``; with ``checkpointed`` (and an outer graph being built) its activations are
    recomputed during the outer backward instead of being stored."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)


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
