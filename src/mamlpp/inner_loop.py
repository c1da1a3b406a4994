"""THE functional core: one task's inner loop and multi-step target loss as a pure function.

Parameters flow in as dicts of tensors and fast weights flow out as new dicts; nothing is mutated,
so the same function runs per task in a Python loop or over a whole meta-batch under
``torch.func.vmap``. Inner gradients use ``torch.func.grad``, which composes with vmap and with
the outer ``loss.backward()`` (second order when the inner graph is kept).

One task, S inner steps (spec section 1):
  theta_0 = meta-parameters
  for i in 0..S-1:
      g = d/dtheta_i CE(f(support_x; theta_i, BN step i))        (graph kept only if second order)
      theta_{i+1} = theta_i - alpha[:, i] * g                     (alpha: LSLR table, per tensor)
      if MSL active: loss += w_i * CE(f(query_x; theta_{i+1}, BN step i))
  if MSL inactive: loss = CE(f(query_x; theta_S, BN step S-1))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# functional_forward(params, x, step, running) -> (logits, {bn: (mean, var)})
ForwardFn = Callable[..., tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]]


@dataclass(frozen=True)
class InnerLoopPlan:
    """Static settings of one call: everything that is Python control flow, not tensors."""

    num_steps: int
    adapted_names: tuple[str, ...]
    second_order: bool
    # MSL weights w_0..w_{S-1} (floats, or a [S] tensor so that a captured CUDA graph can take
    # new values each epoch), or None: only the final step's target loss (weight 1).
    step_weights: tuple[float, ...] | Tensor | None
    # How BN normalises the support passes and the target (query) passes: "batch", "running"
    # (the stored statistics handed in as `running`) or, for target passes, "support" (the
    # support images' statistics). See config.bn_pass_norms for the table per bn_mode.
    support_norm: str = "batch"
    target_norm: str = "batch"
    # Weight of the stored statistics in a "running" pass (< 1: blended with the batch's own,
    # see config.bn_running_weight).
    running_weight: float = 1.0

    def running_kwargs(self) -> dict[str, float]:
        """Extra forward arguments of a "running" pass (none at the default weight 1)."""
        return {} if self.running_weight == 1.0 else {"running_weight": self.running_weight}

    @property
    def use_running_stats(self) -> bool:
        """Whether any pass reads the stored running statistics."""
        return "running" in (self.support_norm, self.target_norm)

    def stat_rows(self, bn_stats: bool) -> list[int]:
        """BN step of each forward pass whose batch statistics are returned, in pass order."""
        if not bn_stats:
            return []
        rows = []
        for i in range(self.num_steps):
            rows.append(i)  # support pass of step i
            if self.step_weights is not None:
                rows.append(i)  # target pass after step i (theta_{i+1}) also uses BN row i
        if self.step_weights is None:
            rows.append(self.num_steps - 1)
        return rows


def weighted_target_loss(plan: InnerLoopPlan, target_losses: list[Tensor]) -> Tensor:
    """Outer loss from the target losses: the MSL-weighted sum, or the single final loss."""
    if plan.step_weights is None:
        return target_losses[0]
    return sum(w * l for w, l in zip(plan.step_weights, target_losses, strict=True))


def stack_pass_stats(
    plan: InnerLoopPlan,
    support_stats: list[dict[str, tuple[Tensor, Tensor]]],
    target_stats: list[dict[str, tuple[Tensor, Tensor]]],
    bn_names: Sequence[str],
    dim: int = 0,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Each BN layer's (mean, var) of every pass, stacked along ``dim`` in the order of
    ``plan.stat_rows``: support_0, (target_0 under MSL), support_1, ..., (final target)."""
    passes = []
    for i in range(plan.num_steps):
        passes.append(support_stats[i])
        if plan.step_weights is not None:
            passes.append(target_stats[i])
    if plan.step_weights is None:
        passes.append(target_stats[0])
    return {
        bn: tuple(torch.stack([p[bn][j] for p in passes], dim=dim) for j in range(2))
        for bn in bn_names
    }


def target_forward(
    forward: ForwardFn,
    params: Mapping[str, Tensor],
    plan: InnerLoopPlan,
    support_x: Tensor,
    query_x: Tensor,
    step: int,
    running: Mapping[str, Tensor] | None,
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Logits of the query images ``query_x [..., m, C, H, W]`` normalised as
    ``plan.target_norm`` says; works per task and task-batched (the sample dim is -4).

    "support": the support images go through the same forward pass, in front of the query,
    and only their statistics normalise; the support logits are dropped.
    """
    if plan.target_norm == "support":
        n = support_x.shape[-4]
        both = torch.cat([support_x, query_x], dim=-4)
        logits, stats = forward(params, both, step, None, norm_rows=n)
        return logits[..., n:, :], stats
    if plan.target_norm == "running":
        return forward(params, query_x, step, running, **plan.running_kwargs())
    return forward(params, query_x, step)


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


def adapt_task(
    forward: ForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None = None,
    on_step: Callable[[int, dict[str, Tensor]], None] | None = None,
) -> tuple[dict[str, Tensor], Tensor, list[dict[str, tuple[Tensor, Tensor]]]]:
    """Run the S inner steps of one task.

    ``params``: every backbone tensor by name; ``inner_lrs``: ``[len(adapted_names), S]``;
    ``support_x [n, C, H, W]``, ``support_y [n]``. ``on_step(i, fast)`` is called with the fast
    weights theta_{i+1} after each step (the learner puts the MSL target losses there).

    Returns the adapted fast weights theta_S (adapted names only), the support losses ``[S]``
    and the batch statistics of each support pass.
    """
    names = plan.adapted_names
    fast = {n: params[n] for n in names}
    fixed = {n: t for n, t in params.items() if n not in fast}
    running = running if plan.support_norm == "running" else None
    extra = plan.running_kwargs() if running is not None else {}
    support_losses = []
    support_stats = []
    for i in range(plan.num_steps):

        def support_loss(adapted: dict[str, Tensor], fixed=fixed, step=i):
            logits, stats = forward({**fixed, **adapted}, support_x, step, running, **extra)
            loss = F.cross_entropy(logits, support_y)
            return loss, (loss.detach(), stats)

        if plan.second_order:
            grads, (loss, stats) = torch.func.grad(support_loss, has_aux=True)(fast)
        else:
            # First order: the inner gradient is a constant for the outer derivative, so it is
            # computed on detached copies and no outer graph is built for the support pass.
            grads, (loss, stats) = torch.func.grad(support_loss, has_aux=True)(
                {n: t.detach() for n, t in fast.items()},
                {n: t.detach() for n, t in fixed.items()},
            )
        fast = {n: fast[n] - inner_lrs[j, i] * grads[n] for j, n in enumerate(names)}
        support_losses.append(loss)
        support_stats.append(stats)
        if on_step is not None:
            on_step(i, fast)
    return fast, torch.stack(support_losses), support_stats


def task_meta_loss(
    forward: ForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    plan: InnerLoopPlan,
    bn_names: Sequence[str],
    running: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """One task's outer loss; BN normalises as ``plan.support_norm``/``plan.target_norm`` say
    (``running``: the stored statistics, read when one of them is "running").

    Returns ``(loss, metrics, stats)``: ``metrics`` holds ``step_losses``/``step_accuracies``
    ``[T]`` for the T target passes (S under MSL, else 1) and ``support_losses [S]``; ``stats``
    maps each BN layer to ``(mean [P, C], var [P, C])`` for the passes in
    ``plan.stat_rows(True)`` order.
    """
    target_losses: list[Tensor] = []
    target_accs: list[Tensor] = []
    target_stats: list[dict[str, tuple[Tensor, Tensor]]] = []

    def target_pass(step: int, fast: dict[str, Tensor]) -> None:
        logits, stats = target_forward(
            forward, {**params, **fast}, plan, support_x, query_x, step, running
        )
        target_losses.append(F.cross_entropy(logits, query_y))
        target_accs.append(_accuracy(logits.detach(), query_y))
        target_stats.append(stats)

    on_step = None
    if plan.step_weights is not None:
        on_step = target_pass
    fast, support_losses, support_stats = adapt_task(
        forward, params, inner_lrs, support_x, support_y, plan, running, on_step=on_step
    )
    if plan.step_weights is None:
        target_pass(plan.num_steps - 1, fast)
    loss = weighted_target_loss(plan, target_losses)
    stats = stack_pass_stats(plan, support_stats, target_stats, bn_names)  # [P, C] each
    metrics = {
        "step_losses": torch.stack([t.detach() for t in target_losses]),
        "step_accuracies": torch.stack(target_accs),
        "support_losses": support_losses,
    }
    return loss, metrics, stats


def task_predict(
    forward: ForwardFn,
    params: Mapping[str, Tensor],
    inner_lrs: Tensor,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    plan: InnerLoopPlan,
    running: Mapping[str, Tensor] | None,
) -> Tensor:
    """Evaluation: adapt on the support set, then logits ``[m, ways]`` of ``query_x`` from
    theta_S at BN step S-1, normalised as the plan says."""
    fast, _, _ = adapt_task(forward, params, inner_lrs, support_x, support_y, plan, running=running)
    logits, _ = target_forward(
        forward, {**params, **fast}, plan, support_x, query_x, plan.num_steps - 1, running
    )
    return logits
