"""The types the parts of MAML++ pass between them, declared once.

* :data:`BatchStats` (declared with the networks that produce it, :mod:`mamlpp.nn.backbone`,
  since ``nn`` sits below ``core``): ``{bn layer: (batch mean, unbiased batch variance)}`` of one
  forward pass;
* :class:`TaskForward`: the forward contract of the algorithm, for all tasks at once
  (``params [B, ...]``, ``x [B, n, ...]``) or for one task (no leading ``B``);
* :class:`PassStats`: every pass's batch statistics of one meta-batch, not yet folded in;
* :class:`MetaLearner`: what the outer step needs of a learner (so :mod:`mamlpp.core.outer_step`
  does not import :mod:`mamlpp.core.learner`, which calls it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from mamlpp.nn.backbone import Backbone, BatchNormContext, BatchStats, Forwards

__all__ = [
    "Backbone",
    "BatchNormContext",
    "BatchStats",
    "Forwards",
    "MetaBatch",
    "MetaLearner",
    "PassStats",
    "TaskForward",
]

# A meta-batch of B tasks, N ways, K shots, T targets per class:
# (support_x [B, N*K, C, H, W], support_y [B, N*K], query_x [B, N*T, C, H, W], query_y [B, N*T]).
MetaBatch = tuple[Tensor, Tensor, Tensor, Tensor]


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
    belongs to BN row ``rows[p]`` (support_0, target_0 under MSL, support_1, ...).
    """

    values: dict[str, tuple[Tensor, Tensor]]
    rows: tuple[int, ...]


class MetaLearner(Protocol):
    """The learner as the outer step sees it (:class:`~mamlpp.core.learner.MAMLpp` is one)."""

    def meta_parameters(self) -> Iterator[nn.Parameter]: ...

    def meta_loss_and_stats(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        epoch: int,
        *,
        msl_weights: Tensor | None = None,
        total_tasks: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], PassStats]: ...

    def clip_gradients_(self) -> None: ...

    def fold_batch_stats(self, stats: PassStats) -> None: ...
