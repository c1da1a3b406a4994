"""The types the parts of MAML++ pass between them, declared once.

* :data:`BatchStats` (declared with the networks that produce it, :mod:`mamlpp.nn.backbone`,
  since ``nn`` sits below ``core``): ``{bn layer: (batch mean, unbiased batch variance)}`` of one
  forward pass;
* :class:`TaskBatch`: a meta-batch of tasks (support and query examples and labels);
* :class:`TaskForward`: the forward contract of the algorithm, for all tasks at once
  (``params [B, ...]``, ``x [B, n, ...]``) or for one task (no leading ``B``);
* :class:`PassStats`: every pass's batch statistics of one meta-batch, not yet folded in;
* :class:`MetaLearner`: what the outer step needs of a learner (so :mod:`mamlpp.core.outer_step`
  does not import :mod:`mamlpp.core.learner`, which calls it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from mamlpp.nn.backbone import Backbone, BatchNormContext, BatchStats, Forwards

__all__ = [
    "Backbone",
    "BatchNormContext",
    "BatchStats",
    "Forwards",
    "MetaLearner",
    "PassStats",
    "TaskBatch",
    "TaskForward",
    "batch_and_epoch",
]


class TaskBatch(NamedTuple):
    """A meta-batch: B episodes of N-way, K-shot tasks with Q query examples per class (labels
    0..N-1, class-major order; Q is ``data.targets`` in configs and ``targets=`` of the
    sampler). Built by :class:`~mamlpp.data.EpisodeSampler`, taken by the learner, the outer
    step and the step runner. A tuple, so ``support_x, support_y, query_x, query_y = batch``."""

    support_x: Tensor  # float [B, N*K, C, H, W] (any example shape in place of C, H, W)
    support_y: Tensor  # int64 [B, N*K]
    query_x: Tensor  # float [B, N*Q, C, H, W]
    query_y: Tensor  # int64 [B, N*Q]

    def to(self, device: torch.device | str | None, non_blocking: bool = False) -> TaskBatch:
        return TaskBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


def batch_and_epoch(
    method: str, batch: TaskBatch | Tensor, args: tuple[Any, ...], epoch: int
) -> tuple[TaskBatch, int]:
    """The meta-batch and epoch of a call ``method(batch, epoch)`` (``args``: what followed
    ``batch`` positionally), or of the form of earlier releases, ``method(support_x, support_y,
    query_x, query_y[, epoch])``, which still works with a DeprecationWarning until the next
    release."""
    if isinstance(batch, Tensor):
        if len(args) not in (3, 4):
            raise TypeError(f"{method}() takes a TaskBatch and the epoch")
        warnings.warn(
            f"{method}(support_x, support_y, query_x, query_y, ...) is deprecated: pass one "
            f"mamlpp.TaskBatch, {method}(TaskBatch(support_x, support_y, query_x, query_y), "
            "epoch)",
            DeprecationWarning,
            stacklevel=3,
        )
        batch, args = TaskBatch(batch, *args[:3]), args[3:]
    if len(args) > 1:
        raise TypeError(f"{method}() takes a TaskBatch and the epoch, got {1 + len(args)} values")
    return TaskBatch(*batch), (args[0] if args else epoch)


class TaskForward(Protocol):
    """``forward(params, x, bn) -> (logits, stats)``.

    Task-batched: ``params {name: [B, ...]}``, ``x [B, n, ...]`` -> logits ``[B, n, N]`` and
    ``{bn: ([B, C], [B, C])}``. Per task: the same without the leading ``B``. ``bn``
    (:class:`~mamlpp.nn.backbone.BatchNormContext`) says how batch norm normalises: the
    per-step row, stored statistics instead of batch statistics, or the support rows'
    statistics (``bn_mode="support"``).
    """

    def __call__(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]: ...


@dataclass(frozen=True)
class PassStats:
    """Batch statistics of every forward pass of a meta-batch, not yet folded in.

    ``values[bn] = (mean [B, P, C], unbiased var [B, P, C])`` for B tasks and P passes; pass p
    belongs to BN row ``rows[p]`` (support_0, query_0 under MSL, support_1, ...).
    """

    values: dict[str, tuple[Tensor, Tensor]]
    rows: tuple[int, ...]


class MetaLearner(Protocol):
    """The learner as the outer step sees it (:class:`~mamlpp.core.learner.MAMLpp` is one)."""

    def meta_parameters(self) -> Iterator[nn.Parameter]: ...

    def meta_loss_and_stats(
        self,
        batch: TaskBatch,
        epoch: int,
        *,
        msl_weights: Tensor | None = None,
        total_tasks: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], PassStats]: ...

    def clip_gradients_(self) -> None: ...

    def fold_batch_stats(self, stats: PassStats) -> None: ...
