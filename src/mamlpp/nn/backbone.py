"""What the learner needs from a network: the :class:`Backbone` contract and the batch
statistics a forward pass returns (Conv4, ModuleBackbone and ResNet-12 through it satisfy it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

from mamlpp.nn.per_step_bn import PerStepBatchNorm

if TYPE_CHECKING:
    from typing_extensions import TypeIs

# {bn layer name: (batch mean [C], unbiased batch variance [C])} from one forward pass.
BatchStats = dict[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class BatchNormContext:
    """How batch norm normalises in one forward pass: the third argument of every forward,
    ``forward(params, x, bn) -> (logits, stats)``.

    * ``step``: the inner step whose per-step row (BNWB gamma/beta, BNRS statistics) is used;
    * ``running``: ``{"<bn>.running_mean" / "<bn>.running_var": table}``, stored statistics that
      normalise instead of the batch's own (evaluation in ``bn_mode="per_step"``); no batch
      statistics are returned then;
    * ``stats_rows`` (``bn_mode="support"``): the first ``stats_rows`` examples alone define
      every layer's batch statistics, which normalise all examples and are the ones returned
      (stored statistics, when given, take precedence).

    Plain Python values, read as control flow: the same context for every task of a call.
    """

    step: int
    running: Mapping[str, Tensor] | None = None
    stats_rows: int | None = None


class Forwards(Protocol):
    """The two forwards of a backbone, the part of :class:`Backbone` that the executions call."""

    def functional_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]: ...

    def task_batched_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]: ...


class Backbone(Protocol):
    """What the learner needs from a network (the task-batched forward contract of
    :mod:`mamlpp.core.algorithm` plus its per-task form and the names of its parts). Every
    backbone is also an ``nn.Module``; of that the learner uses only the parameters.

    Optional: ``dead_names() -> list[str]``, the parameters whose exact gradient is 0 in every
    training pass (a bias that batch norm with batch statistics subtracts again); the learner
    then keeps them exactly still instead of training them on rounding noise."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def adaptable_names(self) -> list[str]:
        """Parameters adapted in the inner loop (conv and linear weights and biases; the
        learner leaves out those with ``requires_grad=False``)."""
        ...

    def bn_layers(self) -> dict[str, PerStepBatchNorm]:
        """Batch-norm layers by name; the learner gives them per-step rows."""
        ...

    def functional_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """One task: logits ``[n, N]`` of ``x [n, ...]`` and ``{bn: (mean [C], var [C])}``
        (none when ``bn.running`` normalises); batch norm as ``bn`` says."""
        ...

    def task_batched_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        """All tasks: ``params [B, ...]``, ``x [B, n, ...]`` -> ``([B, n, N], {bn: ([B, C],
        [B, C])})``; ``bn`` as in :meth:`functional_forward`, for every task (``bn.running``
        holds tables without a task dimension)."""
        ...


def is_backbone(network: object) -> TypeIs[Backbone]:
    """Whether ``network`` implements :class:`Backbone` itself (has a ``task_batched_forward``);
    any other module runs through :class:`~mamlpp.nn.module_backbone.ModuleBackbone`."""
    return hasattr(network, "task_batched_forward")


def has_positional_forwards(backbone: Backbone) -> bool:
    """Whether ``backbone`` was written for the forward form of earlier releases,
    ``(params, x, step, running=None[, stats_rows=None])``: a parameter named ``step``, or more
    than three positional ones."""
    try:
        parameters = inspect.signature(backbone.task_batched_forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: taken as the current form
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 3 or any(p.name == "step" for p in positional)


class PositionalForwards:
    """The forwards of a backbone of the earlier positional form, called with a
    :class:`BatchNormContext` (deprecated: the learner warns when it wraps one; removed in the
    next release). ``stats_rows`` is passed only when set, as earlier releases did, so a
    backbone written before ``bn_mode="support"`` still runs the other modes."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def functional_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        return _positional_call(self.backbone.functional_forward, params, x, bn)

    def task_batched_forward(
        self, params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        return _positional_call(self.backbone.task_batched_forward, params, x, bn)


def _positional_call(
    forward: Callable[..., tuple[Tensor, BatchStats]],
    params: Mapping[str, Tensor],
    x: Tensor,
    bn: BatchNormContext,
) -> tuple[Tensor, BatchStats]:
    extra = () if bn.stats_rows is None else (bn.stats_rows,)
    return forward(params, x, bn.step, bn.running, *extra)
