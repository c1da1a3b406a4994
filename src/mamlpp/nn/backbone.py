"""What the learner needs from a network: the :class:`Backbone` contract and the batch
statistics a forward pass returns (Conv4, ModuleBackbone and ResNet-12 through it satisfy it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

from mamlpp.nn.per_step_bn import PerStepBatchNorm

if TYPE_CHECKING:
    from typing_extensions import TypeIs

# {bn layer name: (batch mean [C], unbiased batch variance [C])} from one forward pass.
BatchStats = dict[str, tuple[Tensor, Tensor]]


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
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        stats_rows: int | None = None,
    ) -> tuple[Tensor, BatchStats]:
        """One task: logits ``[n, N]`` of ``x [n, ...]`` and ``{bn: (mean [C], var [C])}``.

        ``stats_rows`` (``bn_mode="support"``): the first ``stats_rows`` examples alone define
        every batch-norm layer's batch statistics, which normalise all ``n`` examples and are
        the ones returned. The algorithm passes it only in that mode, so a backbone written
        without it still runs the other modes."""
        ...

    def task_batched_forward(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        stats_rows: int | None = None,
    ) -> tuple[Tensor, BatchStats]:
        """All tasks: ``params [B, ...]``, ``x [B, n, ...]`` -> ``([B, n, N], {bn: ([B, C],
        [B, C])})``; ``stats_rows`` as in :meth:`functional_forward`, for every task."""
        ...


def is_backbone(network: object) -> TypeIs[Backbone]:
    """Whether ``network`` implements :class:`Backbone` itself (has a ``task_batched_forward``);
    any other module runs through :class:`~mamlpp.nn.module_backbone.ModuleBackbone`."""
    return hasattr(network, "task_batched_forward")
