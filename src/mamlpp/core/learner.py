"""The MAML++ learner: meta-loss for training, adaptation and prediction for evaluation.

No optimiser, device policy or I/O lives here (the outer update is
:mod:`mamlpp.core.outer_step`; the loop around it is :mod:`mamlpp.run.trainer`). The learner owns
the backbone and the learned inner learning rates (LSLR), gives the backbone's batch norm its
per-step rows from the MetaConfig (BNRS, BNWB), and turns a meta-batch of tasks into a loss ready
for ``.backward()`` with the one algorithm of :mod:`mamlpp.core.algorithm`. ``execution`` only
chooses how the tasks of a call are computed (:mod:`mamlpp.core.executions`: ``"batched"``,
``"loop"`` or ``"vmap"``; same results).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlpp.core import algorithm, schedules
from mamlpp.core.algorithm import InnerLoopPlan
from mamlpp.core.config import MetaConfig
from mamlpp.core.executions import Execution, check_execution, task_batched_forward
from mamlpp.core.outer_step import outer_step
from mamlpp.core.types import (
    Backbone,
    BatchNormContext,
    BatchStats,
    Forwards,
    PassStats,
    TaskBatch,
    TaskForward,
    batch_and_epoch,
)
from mamlpp.errors import ConfigError
from mamlpp.nn.backbone import PositionalForwards, has_positional_forwards, is_backbone
from mamlpp.nn.module_backbone import ModuleBackbone
from mamlpp.nn.per_step_bn import fold_running_stats


class MAMLpp(nn.Module):
    """MAML++ around a backbone (e.g. :class:`~mamlpp.nn.Conv4`) and a :class:`MetaConfig`.

    Meta-parameters (for the outer optimiser): every trainable backbone parameter (conv/linear
    weights and biases, BN gamma/beta) plus, with LSLR, the inner learning-rate table
    ``inner_lrs`` of shape ``[len(adapted_names), S]``: one scalar per adapted tensor per inner
    step. A tensor with ``requires_grad=False`` is frozen: neither adapted nor trained, and a
    frozen BN gamma/beta keeps its shared ``[C]`` shape. ``dead_names``: trainable tensors
    whose exact gradient is 0 in every training pass (a bias that batch norm subtracts again);
    their inner and outer gradients are exactly 0, so they stay exactly still.
    """

    backbone: Backbone
    inner_lrs: Tensor  # [len(adapted_names), S]: a Parameter under LSLR, else a buffer

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        config: MetaConfig | None = None,
        execution: Execution = "batched",
        checkpoint_steps: bool = False,
    ):
        super().__init__()
        config = MetaConfig() if config is None else config
        # A plain nn.Module (standard layers) runs functionally, batched under vmap.
        self.backbone = backbone if is_backbone(backbone) else ModuleBackbone(backbone)
        # A backbone of the earlier positional forward form runs through an adapter, for one
        # release (docs/algorithm.md, "The network").
        self._positional_forwards = has_positional_forwards(self.backbone)
        if self._positional_forwards:
            warnings.warn(
                f"{type(self.backbone).__name__}.functional_forward/task_batched_forward take "
                "(params, x, step, running, stats_rows), the form of earlier releases; take "
                "(params, x, bn: mamlpp.nn.BatchNormContext) instead (bn.step, bn.running, "
                "bn.stats_rows). The old form is run through an adapter until the next release",
                DeprecationWarning,
                stacklevel=2,
            )
        self.config = config
        # The config states the step count and the per-step switches once; the backbone's batch
        # norm gets its rows from here: [S, C] under BNWB / BNRS, else shared [C].
        for layer in self.backbone.bn_layers().values():
            layer.set_steps(
                config.num_inner_steps, config.per_step_bn_affine, config.per_step_bn_stats
            )
        self.execution = check_execution(execution)
        # Recompute each inner step's activations in the outer backward instead of storing them
        # (trades compute for memory).
        self.checkpoint_steps = checkpoint_steps
        # Example shapes whose logits were checked against the tasks' classes (see _checked).
        self._outputs_checked: set[tuple[int, ...]] = set()
        params = self._params()
        names = list(self.backbone.adaptable_names())
        if config.adapt_bn_affine:
            names += [f"{bn}.{p}" for bn in self.backbone.bn_layers() for p in ("weight", "bias")]
        # Frozen tensors (requires_grad=False) are not adapted: no inner step, no LSLR row.
        names = [n for n in names if params[n].requires_grad]
        if not names:
            raise ConfigError(
                "nothing to adapt: every tensor the inner loop would adapt has requires_grad=False"
            )
        self.adapted_names: tuple[str, ...] = tuple(names)
        # Tensors with an exact gradient of 0 in every training pass (training always normalises
        # with batch statistics): kept exactly still instead of moved by Adam on rounding noise.
        dead: list[str] = getattr(self.backbone, "dead_names", list)()
        self.dead_names: tuple[str, ...] = tuple(n for n in dead if params[n].requires_grad)
        table = torch.full((len(names), config.num_inner_steps), float(config.inner_lr))
        if config.learn_inner_lrs:
            self.inner_lrs = nn.Parameter(table)
        else:
            self.register_buffer("inner_lrs", table)

    # -- what the outer optimiser trains ------------------------------------------------------
    def meta_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable backbone parameters (not those with ``requires_grad=False``), then the
        LSLR table when it is learned."""
        yield from self.network_parameters()
        if isinstance(self.inner_lrs, nn.Parameter):
            yield self.inner_lrs

    def network_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone's trainable parameters alone (gradient clipping applies to these only)."""
        return (p for p in self.backbone.parameters() if p.requires_grad)

    def make_optimizer(self) -> torch.optim.Adam:
        """Adam over the meta-parameters at the epoch-0 learning rate (default betas, as the
        paper's reference code)."""
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

    def _task_forward(self, execution: Execution | None = None) -> TaskForward:
        """The task-batched forward of the backbone for ``execution`` (default: the learner's)."""
        forwards: Forwards = (
            PositionalForwards(self.backbone) if self._positional_forwards else self.backbone
        )
        return task_batched_forward(forwards, execution or self.execution)

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
        # Inputs are [B, n, *example]: images [C, H, W] for the built-in networks, any example
        # shape (vectors, sequences, volumes) for a wrapped module.
        if support_y.dim() != 2 or support_x.shape[:2] != support_y.shape:
            raise ValueError(
                "support_x must be [B, N*K, ...] and support_y [B, N*K], got shapes "
                f"{tuple(support_x.shape)} and {tuple(support_y.shape)}"
            )
        if query_x is not None:
            if query_x.shape[0] != support_x.shape[0] or query_x.shape[2:] != support_x.shape[2:]:
                raise ValueError(
                    f"query_x must be [B={support_x.shape[0]}, N*Q, "
                    f"{', '.join(map(str, support_x.shape[2:]))}], "
                    f"got shape {tuple(query_x.shape)}"
                )
            if query_y is not None and query_y.shape != query_x.shape[:2]:
                raise ValueError(
                    f"query_y must be [B, N*Q] = {tuple(query_x.shape[:2])}, "
                    f"got {tuple(query_y.shape)}"
                )

    def _checked(self, forward: TaskForward, support_x: Tensor, support_y: Tensor) -> TaskForward:
        """``forward``, checked at the first batch of each example shape (tasks on the CPU): it
        must give one logit per class of the tasks, so that a network with the wrong number of
        outputs is a one-line error, not an IndexError from the loss (or, with too many, a
        softmax over classes no task has). Later batches get ``forward`` itself (no cost)."""
        key = tuple(support_x.shape[2:])
        checked = self._outputs_checked
        if key in checked or support_y.device.type != "cpu":
            return forward  # on an accelerator reading the labels would be a host sync
        # Labels 0..N-1, read through numpy: no tensor operation (the graph-safety checks of
        # mamlpp.engine watch those for host reads).
        classes = int(support_y.detach().numpy().max()) + 1

        def checking(
            params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
        ) -> tuple[Tensor, BatchStats]:
            logits, stats = forward(params, x, bn)
            if logits.shape[-1] != classes:
                raise ConfigError(
                    f"the network gives {logits.shape[-1]} outputs per example, but the tasks "
                    f"have {classes} classes: its last layer needs one output per class (the "
                    "ways of the tasks, data.ways)"
                )
            checked.add(key)
            return logits, stats

        return checking

    # -- training --------------------------------------------------------------------------------
    def meta_loss(
        self,
        batch: TaskBatch,
        *args: Any,
        epoch: int = 0,
        execution: Execution | None = None,
        update_bn_stats: bool = True,
        msl_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Outer loss of a meta-batch at ``epoch`` (MSL weights and derivative order from the
        schedules), ready for ``.backward()``: ``meta_loss(batch, epoch)``.

        ``batch``: a :class:`~mamlpp.core.types.TaskBatch`, ``support_x [B, N*K, C, H, W]``,
        ``support_y [B, N*K]``, ``query_x [B, N*Q, C, H, W]``, ``query_y [B, N*Q]``. (The form
        of earlier releases, ``meta_loss(support_x, support_y, query_x, query_y, epoch)``, still
        works, with a DeprecationWarning.) With ``update_bn_stats`` the running statistics are
        updated from the batch statistics of every pass (per-step rows under BNRS), exactly as a
        task-by-task loop would update them.

        Metrics (detached tensors): ``accuracy`` (final-step query accuracy), ``step_losses`` and
        ``step_accuracies`` ``[L]`` for the L query passes (L = S under MSL, else 1),
        ``support_losses [S]``, each the mean over tasks. ``msl_weights`` (a ``[S]`` tensor)
        replaces the schedule's values while MSL is active, so a captured CUDA graph reads new
        weights each epoch.
        """
        batch, epoch = batch_and_epoch("meta_loss", batch, args, epoch)
        loss, metrics, stats = self.meta_loss_and_stats(
            batch, epoch, execution=execution, msl_weights=msl_weights
        )
        if update_bn_stats:
            self.fold_batch_stats(stats)
        return loss, metrics

    def meta_loss_and_stats(
        self,
        batch: TaskBatch,
        *args: Any,
        epoch: int = 0,
        execution: Execution | None = None,
        msl_weights: Tensor | None = None,
        total_tasks: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], PassStats]:
        """:meth:`meta_loss` without touching the running statistics: also returns every
        pass's batch statistics (:class:`PassStats`) for :meth:`fold_batch_stats`.

        ``total_tasks`` is the divisor of the ``"mean"`` task reduction (default: B). A process
        of a data-parallel run holds B of ``total_tasks`` tasks, so its losses still sum to the
        whole meta-batch's loss.
        """
        batch, epoch = batch_and_epoch("meta_loss_and_stats", batch, args, epoch)
        self._check_batch(*batch)
        weights: list[float] | Tensor | None = self.msl_weights(epoch)
        if weights is not None and msl_weights is not None:
            weights = msl_weights
        plan = InnerLoopPlan(
            num_steps=self.config.num_inner_steps,
            adapted_names=self.adapted_names,
            second_order=self.second_order_at(epoch),
            step_weights=weights if weights is None or torch.is_tensor(weights) else tuple(weights),
            dead_names=frozenset(self.dead_names),
            bn_from_support=self.config.bn_mode == "support",
        )
        losses, metrics, stats = algorithm.meta_loss(
            self._checked(self._task_forward(execution), batch.support_x, batch.support_y),
            self._params(),
            self.inner_lrs,
            batch,
            plan,
            self._bn_names(),
            checkpoint_steps=self.checkpoint_steps,
        )
        # losses [B]; metrics[k] [B, ...]; stats.values[bn] = (mean [B, P, C], var [B, P, C])
        if self.config.task_reduction == "sum":
            loss = losses.sum()
        elif total_tasks is None:
            loss = losses.mean()
        else:
            loss = losses.sum() / total_tasks
        summary = {k: v.mean(0) for k, v in metrics.items()}
        summary["accuracy"] = summary["step_accuracies"][-1]
        summary["loss"] = loss.detach()
        return loss, summary, stats

    @torch.no_grad()
    def fold_batch_stats(self, stats: PassStats) -> None:
        """Fold the batch statistics of a meta-batch into the running statistics, in the order
        a task-by-task loop would (momentum ``bn_momentum``; per-step rows under BNRS)."""
        momentum = self.config.bn_momentum
        for bn, layer in self.backbone.bn_layers().items():
            mean, var = stats.values[bn]
            layer.running_mean.copy_(
                fold_running_stats(layer.running_mean, mean, stats.rows, momentum)
            )
            layer.running_var.copy_(
                fold_running_stats(layer.running_var, var, stats.rows, momentum)
            )

    def meta_step(
        self,
        optimizer: torch.optim.Optimizer,
        batch: TaskBatch,
        *args: Any,
        epoch: int = 0,
    ) -> dict[str, Tensor]:
        """One outer update (:func:`mamlpp.core.outer_step.outer_step`): meta-loss, backward,
        optional clamp, optimiser step, running statistics: ``meta_step(optimizer, batch,
        epoch)`` (the earlier ``meta_step(optimizer, support_x, support_y, query_x, query_y,
        epoch)`` still works, with a DeprecationWarning)."""
        batch, epoch = batch_and_epoch("meta_step", batch, args, epoch)
        return outer_step(self, optimizer, batch, epoch)

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
        return InnerLoopPlan(
            num_steps=steps,
            adapted_names=self.adapted_names,
            second_order=False,
            step_weights=None,
            use_running_stats=self.config.bn_mode == "per_step",
            # Silenced only where batch statistics normalise (algorithm.adapt); with stored
            # statistics (bn_mode="per_step") these biases are live.
            dead_names=frozenset(self.dead_names),
            bn_from_support=self.config.bn_mode == "support",
        )

    def _lrs_for(self, steps: int) -> Tensor:
        if steps == self.inner_lrs.shape[1]:
            return self.inner_lrs
        # Only reachable without per-step parameters: a constant inner learning rate.
        return self.inner_lrs[:, :1].expand(-1, steps)

    def _eval_inputs(
        self, num_steps: int | None
    ) -> tuple[InnerLoopPlan, dict[str, Tensor], Tensor, dict[str, Tensor] | None]:
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
        execution: Execution | None = None,
    ) -> Tensor:
        """Evaluation: adapt to each task's support set (first order), then logits of its
        query set from theta_S at BN step S-1.

        Accepts a meta-batch (``[B, N*K, C, H, W]`` -> logits ``[B, N*Q, ways]``) or one task
        (``[N*K, C, H, W]`` -> ``[N*Q, ways]``); any example shape in place of ``C, H, W``.
        Nothing stored in the model changes: in ``bn_mode="per_step"`` the running statistics
        are read, never written. No outer graph is built (inner gradients are taken on detached
        copies). In ``bn_mode="support"`` batch norm normalises the queries with the support
        set's statistics, so each query's logits are independent of the other queries.
        """
        single = support_y.dim() == 1  # one task: labels [N*K]
        if single:
            support_x, support_y, query_x = support_x[None], support_y[None], query_x[None]
        self._check_batch(support_x, support_y, query_x)
        plan, params, lrs, running = self._eval_inputs(num_steps)
        forward = self._checked(self._task_forward(execution), support_x, support_y)
        with torch.no_grad():
            logits = algorithm.predict(
                forward, params, lrs, support_x, support_y, query_x, plan, running
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
            theta = algorithm.adapt(
                self._checked(self._task_forward(), support_x, support_y),
                params,
                lrs,
                support_x,
                support_y,
                plan,
                running,
            )
        return {n: theta[n] for n in self.adapted_names}

    def predict(
        self,
        fast_weights: dict[str, Tensor],
        query_x: Tensor,
        support_x: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, N*Q, ways]`` of ``query_x [B, N*Q, C, H, W]`` with per-task fast
        weights from :meth:`adapt`, at BN step S-1. ``bn_mode="support"`` needs the support
        images ``support_x [B, N*K, C, H, W]`` the weights were adapted to (their statistics
        normalise the queries); the other modes ignore it."""
        plan, params, _, running = self._eval_inputs(None)
        if plan.bn_from_support and support_x is None:
            raise ConfigError(
                'predict() in bn_mode="support" needs support_x (its statistics normalise the '
                "queries); pass it, or use adapt_and_predict()"
            )
        num_tasks = query_x.shape[0]
        shared = {n: t.expand(num_tasks, *t.shape) for n, t in params.items()}
        with torch.no_grad():
            forward = self._task_forward()
            fast = {**shared, **fast_weights}
            bn = BatchNormContext(plan.num_steps - 1, running)
            if support_x is None:
                logits, _ = forward(fast, query_x, bn)
            else:
                logits, _ = algorithm.query_forward(forward, plan, fast, support_x, query_x, bn)
        return logits
