"""The MAML++ learner: meta-loss for training, adaptation and prediction for evaluation.

No optimiser, device policy or I/O lives here (see :mod:`mamlpp.train`). The learner owns the
backbone and the learned inner learning rates (LSLR) and turns a meta-batch of tasks into a loss
ready for ``.backward()``. Three execution paths compute the same thing:

* ``"batched"`` (default): the whole meta-batch as one computation, tasks as channel groups
  (:mod:`mamlpp.task_batched`); supports activation checkpointing of inner steps.
* ``"vmap"``: the per-task function of :mod:`mamlpp.inner_loop` under ``torch.func.vmap``.
* ``"loop"``: the same per-task function in a plain Python loop over tasks (the reference path).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from . import schedules
from .config import MetaConfig, bn_pass_norms, bn_running_weight
from .errors import ConfigError
from .inner_loop import InnerLoopPlan, task_meta_loss, task_predict
from .nn.backbones import Backbone
from .nn.per_step_bn import fold_running_stats
from .task_batched import batched_adapt, batched_meta_loss, batched_predict

EXECUTIONS = ("batched", "vmap", "loop")


class MAMLpp(nn.Module):
    """MAML++ around a backbone (e.g. :class:`~mamlpp.nn.Conv4`) and a :class:`MetaConfig`.

    Meta-parameters (for the outer optimiser): every backbone parameter (conv/linear weights and
    biases, BN gamma/beta) plus, with LSLR, the inner learning-rate table ``inner_lrs`` of shape
    ``[len(adapted_names), S]``: one scalar per adapted tensor per inner step.
    """

    def __init__(
        self,
        backbone: Backbone,
        config: MetaConfig | None = None,
        execution: str = "batched",
        checkpoint_steps: bool = False,
    ):
        super().__init__()
        config = MetaConfig() if config is None else config
        self._check_backbone(backbone, config)
        self.backbone = backbone
        self.config = config
        self.execution = self._check_execution(execution)
        # Recompute each inner step's activations in the outer backward instead of storing them
        # (only the "batched" path; trades compute for memory).
        self.checkpoint_steps = checkpoint_steps
        names = list(backbone.adaptable_names())
        if config.adapt_bn_affine:
            names += [f"{bn}.{p}" for bn in backbone.bn_layers() for p in ("weight", "bias")]
        self.adapted_names: tuple[str, ...] = tuple(names)
        table = torch.full((len(names), config.num_inner_steps), float(config.inner_lr))
        if config.learn_inner_lrs:
            self.inner_lrs = nn.Parameter(table)
        else:
            self.register_buffer("inner_lrs", table)

    @staticmethod
    def _check_execution(execution: str) -> str:
        if execution not in EXECUTIONS:
            raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        return execution

    @staticmethod
    def _check_backbone(backbone: Backbone, config: MetaConfig) -> None:
        for name, bn in backbone.bn_layers().items():
            stats_steps = bn.running_mean.dim() == 2
            affine_steps = bn.weight.dim() == 2
            if stats_steps != config.per_step_bn_stats or affine_steps != config.per_step_bn_affine:
                raise ConfigError(
                    f"backbone BN layer {name} (weights {tuple(bn.weight.shape)}, statistics "
                    f"{tuple(bn.running_mean.shape)}) does not match per_step_bn_affine="
                    f"{config.per_step_bn_affine}, per_step_bn_stats={config.per_step_bn_stats}"
                )
        if (config.per_step_bn_stats or config.per_step_bn_affine) and (
            backbone.num_steps != config.num_inner_steps
        ):
            raise ConfigError(
                f"backbone has per-step BN for {backbone.num_steps} steps but "
                f"num_inner_steps={config.num_inner_steps}"
            )

    # -- what the outer optimiser trains ------------------------------------------------------
    def meta_parameters(self) -> Iterator[nn.Parameter]:
        """Backbone parameters, then the LSLR table when it is learned."""
        yield from self.backbone.parameters()
        if isinstance(self.inner_lrs, nn.Parameter):
            yield self.inner_lrs

    def network_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone's parameters alone (gradient clipping applies to these only)."""
        return self.backbone.parameters()

    def make_optimizer(self) -> torch.optim.Adam:
        """Adam over the meta-parameters at the epoch-0 learning rate (spec: default betas)."""
        return torch.optim.Adam(self.meta_parameters(), lr=self.outer_lr(0))

    def clip_gradients_(self) -> None:
        """Clamp each network gradient element to [-grad_clip, grad_clip] (not the LSLR table)."""
        if self.config.grad_clip is None:
            return
        for p in self.network_parameters():
            if p.grad is not None:
                p.grad.clamp_(-self.config.grad_clip, self.config.grad_clip)

    # -- schedules (pure functions of the epoch) ----------------------------------------------
    def msl_weights(self, epoch: int) -> list[float] | None:
        return schedules.step_loss_weights(epoch, self.config)

    def second_order_at(self, epoch: int) -> bool:
        return schedules.second_order_at(epoch, self.config)

    def outer_lr(self, epoch: int) -> float:
        return schedules.outer_lr(epoch, self.config)

    # -- helpers -------------------------------------------------------------------------------
    def _params(self) -> dict[str, Tensor]:
        return dict(self.backbone.named_parameters())

    def _bn_names(self) -> list[str]:
        return list(self.backbone.bn_layers())

    def _running(self) -> dict[str, Tensor]:
        return {
            f"{bn}.running_{s}": getattr(layer, f"running_{s}")
            for bn, layer in self.backbone.bn_layers().items()
            for s in ("mean", "var")
        }

    @staticmethod
    def _check_batch(
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor | None = None,
        query_y: Tensor | None = None,
    ) -> None:
        if support_x.dim() != 5:
            raise ValueError(
                f"support_x must be [B, N*K, C, H, W], got shape {tuple(support_x.shape)}"
            )
        if support_y.shape != support_x.shape[:2]:
            raise ValueError(
                f"support_y must be [B, N*K] = {tuple(support_x.shape[:2])}, "
                f"got {tuple(support_y.shape)}"
            )
        if query_x is not None:
            if query_x.dim() != 5 or query_x.shape[0] != support_x.shape[0]:
                raise ValueError(
                    f"query_x must be [B={support_x.shape[0]}, N*T, C, H, W], "
                    f"got shape {tuple(query_x.shape)}"
                )
            if query_y is not None and query_y.shape != query_x.shape[:2]:
                raise ValueError(
                    f"query_y must be [B, N*T] = {tuple(query_x.shape[:2])}, "
                    f"got {tuple(query_y.shape)}"
                )

    # -- training --------------------------------------------------------------------------------
    def meta_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        epoch: int = 0,
        *,
        execution: str | None = None,
        update_bn_stats: bool = True,
        msl_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Outer loss of a meta-batch at ``epoch`` (MSL weights and derivative order from the
        schedules), ready for ``.backward()``.

        Shapes: ``support_x [B, N*K, C, H, W]``, ``support_y [B, N*K]``, ``query_x
        [B, N*T, C, H, W]``, ``query_y [B, N*T]``. With ``update_bn_stats`` the running statistics
        are updated from the batch statistics of every pass (per-step rows under BNRS), exactly
        as a task-by-task loop would update them.

        Metrics (detached tensors): ``accuracy`` (final-step query accuracy), ``step_losses`` and
        ``step_accuracies`` ``[T]`` (T = S under MSL, else 1), ``support_losses [S]``, each the
        mean over tasks. ``msl_weights`` (a ``[S]`` tensor) replaces the schedule's values while
        MSL is active, so a captured CUDA graph reads new weights each epoch.
        """
        self._check_batch(support_x, support_y, query_x, query_y)
        weights = self.msl_weights(epoch)
        if weights is not None and msl_weights is not None:
            weights = msl_weights
        support_norm, target_norm = bn_pass_norms(self.config, epoch)
        plan = InnerLoopPlan(
            num_steps=self.config.num_inner_steps,
            adapted_names=self.adapted_names,
            second_order=self.second_order_at(epoch),
            step_weights=weights if weights is None or torch.is_tensor(weights) else tuple(weights),
            support_norm=support_norm,
            target_norm=target_norm,
            running_weight=bn_running_weight(self.config, epoch),
        )
        params = self._params()
        bn_names = self._bn_names()
        forward = self.backbone.functional_forward
        # A snapshot: the buffers are updated in place below, after the graph that reads them
        # was built (and they carry no gradient: the statistics are constants of the loss).
        running = (
            {n: t.clone() for n, t in self._running().items()} if plan.use_running_stats else None
        )

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor):
            return task_meta_loss(
                forward, params, self.inner_lrs, sx, sy, qx, qy, plan, bn_names, running
            )

        execution = self._check_execution(execution or self.execution)
        if execution == "batched":
            losses, metrics, stats = batched_meta_loss(
                self.backbone.task_batched_forward,
                params,
                self.inner_lrs,
                support_x,
                support_y,
                query_x,
                query_y,
                plan,
                bn_names,
                checkpoint_steps=self.checkpoint_steps,
                running=running,
            )
        elif execution == "vmap":
            losses, metrics, stats = torch.func.vmap(one_task)(
                support_x, support_y, query_x, query_y
            )
        else:
            results = [
                one_task(support_x[b], support_y[b], query_x[b], query_y[b])
                for b in range(support_x.shape[0])
            ]
            losses = torch.stack([r[0] for r in results])
            metrics = {k: torch.stack([r[1][k] for r in results]) for k in results[0][1]}
            stats = {
                bn: tuple(torch.stack([r[2][bn][j] for r in results]) for j in range(2))
                for bn in bn_names
            }
        # losses [B]; metrics[k] [B, ...]; stats[bn] = (mean [B, P, C], var [B, P, C])
        loss = losses.mean() if self.config.task_reduction == "mean" else losses.sum()
        if update_bn_stats:
            self._update_running_stats(stats, plan.stat_rows(True))
        summary = {k: v.mean(0) for k, v in metrics.items()}
        summary["accuracy"] = summary["step_accuracies"][-1]
        summary["loss"] = loss.detach()
        return loss, summary

    @torch.no_grad()
    def _update_running_stats(self, stats: dict, rows: list[int]) -> None:
        momentum = self.config.bn_momentum
        for bn, layer in self.backbone.bn_layers().items():
            mean, var = stats[bn]
            layer.running_mean.copy_(fold_running_stats(layer.running_mean, mean, rows, momentum))
            layer.running_var.copy_(fold_running_stats(layer.running_var, var, rows, momentum))

    def meta_step(
        self,
        optimizer: torch.optim.Optimizer,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        epoch: int = 0,
    ) -> dict[str, Tensor]:
        """One outer update: meta-loss, backward, optional clamp, optimiser step."""
        loss, metrics = self.meta_loss(support_x, support_y, query_x, query_y, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.clip_gradients_()
        optimizer.step()
        return metrics

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_plan(self, num_steps: int | None) -> InnerLoopPlan:
        steps = self.config.num_inner_steps if num_steps is None else num_steps
        per_step = (
            self.config.learn_inner_lrs
            or self.config.per_step_bn_stats
            or self.config.per_step_bn_affine
        )
        if steps != self.config.num_inner_steps and per_step:
            raise ConfigError(
                f"evaluation with {steps} inner steps, but the model was trained with "
                f"{self.config.num_inner_steps} and has per-step parameters (LSLR/BNRS/BNWB)"
            )
        support_norm, target_norm = bn_pass_norms(self.config, None)
        return InnerLoopPlan(
            num_steps=steps,
            adapted_names=self.adapted_names,
            second_order=False,
            step_weights=None,
            support_norm=support_norm,
            target_norm=target_norm,
        )

    def _lrs_for(self, steps: int) -> Tensor:
        if steps == self.inner_lrs.shape[1]:
            return self.inner_lrs
        # Only reachable without per-step parameters: a constant inner learning rate.
        return self.inner_lrs[:, :1].expand(-1, steps)

    def _eval_inputs(self, num_steps: int | None):
        """Plan, detached parameters, learning rates and (copied) running statistics."""
        plan = self._eval_plan(num_steps)
        params = {n: p.detach() for n, p in self._params().items()}
        lrs = self._lrs_for(plan.num_steps).detach()
        running = (
            {n: t.clone() for n, t in self._running().items()} if plan.use_running_stats else None
        )
        return plan, params, lrs, running

    def adapt_and_predict(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        num_steps: int | None = None,
        execution: str | None = None,
    ) -> Tensor:
        """Evaluation: adapt to each task's support set (first order), then logits of its
        query set from theta_S at BN step S-1.

        Accepts a meta-batch (``[B, N*K, C, H, W]`` -> logits ``[B, N*T, ways]``) or one task
        (``[N*K, C, H, W]`` -> ``[N*T, ways]``). Nothing stored in the model changes: in
        ``bn_mode="per_step"`` the running statistics are read, never written. No outer graph
        is built (inner gradients are taken on detached copies).
        """
        single = support_x.dim() == 4
        if single:
            support_x, support_y, query_x = support_x[None], support_y[None], query_x[None]
        self._check_batch(support_x, support_y, query_x)
        plan, params, lrs, running = self._eval_inputs(num_steps)
        execution = self._check_execution(execution or self.execution)
        forward = self.backbone.functional_forward

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
            return task_predict(forward, params, lrs, sx, sy, qx, plan, running)

        with torch.no_grad():
            if execution == "batched":
                logits = batched_predict(
                    self.backbone.task_batched_forward,
                    params,
                    lrs,
                    support_x,
                    support_y,
                    query_x,
                    plan,
                    running,
                )
            elif execution == "vmap":
                # torch.func.grad computes inner gradients even under no_grad.
                logits = torch.func.vmap(one_task)(support_x, support_y, query_x)
            else:
                logits = torch.stack(
                    [
                        one_task(support_x[b], support_y[b], query_x[b])
                        for b in range(support_x.shape[0])
                    ]
                )
        return logits[0] if single else logits

    def adapt(
        self, support_x: Tensor, support_y: Tensor, num_steps: int | None = None
    ) -> dict[str, Tensor]:
        """Fast weights theta_S for each task of ``support_x [B, N*K, C, H, W]`` (first order,
        nothing stored changes). Returns ``{name: [B, ...]}`` for the adapted tensors."""
        self._check_batch(support_x, support_y)
        plan, params, lrs, running = self._eval_inputs(num_steps)
        with torch.no_grad():
            fast, _, _ = batched_adapt(
                self.backbone.task_batched_forward,
                params,
                lrs,
                support_x,
                support_y,
                plan,
                running,
            )
        return fast

    def predict(self, fast_weights: dict[str, Tensor], query_x: Tensor) -> Tensor:
        """Logits ``[B, N*T, ways]`` of ``query_x [B, N*T, C, H, W]`` with per-task fast
        weights from :meth:`adapt`, at BN step S-1."""
        plan, params, _, running = self._eval_inputs(None)
        if plan.target_norm == "support":
            raise ConfigError(
                f"predict() has no support set to normalise with (bn_mode="
                f"{self.config.bn_mode!r}); use adapt_and_predict()"
            )
        if plan.target_norm == "batch":
            running = None
        num_tasks = query_x.shape[0]
        shared = {n: t.expand(num_tasks, *t.shape) for n, t in params.items()}
        with torch.no_grad():
            logits, _ = self.backbone.task_batched_forward(
                {**shared, **fast_weights}, query_x, plan.num_steps - 1, running
            )
        return logits
