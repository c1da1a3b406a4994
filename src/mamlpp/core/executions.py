"""Ways to run a meta-batch: implementations of the task-batched forward contract.

The algorithm (:mod:`mamlpp.core.algorithm`) is written once against::

    forward(params {name: [B, ...]}, x [B, n, ...], step, running, stats_rows)
        -> (logits [B, n, N], stats)

and an *execution* only decides how the B tasks of that call are computed:

* ``"batched"``: the backbone's own ``task_batched_forward`` (Conv4: tasks as channel groups of
  one grouped convolution per layer, fused batch norm);
* ``"loop"``: the backbone's per-task ``functional_forward`` called task by task, results stacked
  (what the reference does; inside a CUDA graph the launch overhead disappears, and per-task
  convolutions are cuDNN's best case);
* ``"vmap"``: the per-task forward under ``torch.func.vmap``.

All three give the same loss, meta-gradients and statistics (tests compare them in float64).
An operation that vmap cannot batch (e.g. ``nn.GRU``) under ``"batched"`` or ``"vmap"`` is a
one-line ``ConfigError`` naming it and ``execution="loop"``, which runs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from mamlpp.core.types import Backbone, BatchStats, TaskForward
from mamlpp.errors import ConfigError

EXECUTIONS = ("batched", "loop", "vmap")


def _call(
    per_task: TaskForward,
    params: Mapping[str, Tensor],
    x: Tensor,
    step: int,
    running: Mapping[str, Tensor] | None,
    stats_rows: int | None,
) -> tuple[Tensor, BatchStats]:
    """``per_task`` with ``stats_rows`` passed only when given (``bn_mode="support"``), so a
    backbone written without that argument still runs the other modes."""
    if stats_rows is None:
        return per_task(params, x, step, running)
    return per_task(params, x, step, running, stats_rows)


def looped(per_task: TaskForward) -> TaskForward:
    """A task-batched forward that runs ``per_task`` once per task and stacks the results."""

    def forward(
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        stats_rows: int | None = None,
    ) -> tuple[Tensor, BatchStats]:
        results = [
            _call(per_task, {n: t[b] for n, t in params.items()}, x[b], step, running, stats_rows)
            for b in range(x.shape[0])
        ]
        logits = torch.stack([r[0] for r in results])  # [B, n, N]
        stats = {
            bn: (
                torch.stack([r[1][bn][0] for r in results]),  # [B, C]
                torch.stack([r[1][bn][1] for r in results]),
            )
            for bn in results[0][1]
        }
        return logits, stats

    return forward


def vmapped(per_task: TaskForward) -> TaskForward:
    """A task-batched forward that maps ``per_task`` over the task dimension with vmap (the
    stored statistics, shared by all tasks, are not mapped)."""

    def forward(
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        stats_rows: int | None = None,
    ) -> tuple[Tensor, BatchStats]:
        def one(p: dict[str, Tensor], xb: Tensor) -> tuple[Tensor, BatchStats]:
            return _call(per_task, p, xb, step, running, stats_rows)

        return torch.func.vmap(one)(dict(params), x)

    return forward


# torch's message for an operation that vmap cannot batch, e.g. "Batching rule not implemented
# for aten::gru.input. We could not generate a fallback."
_NO_BATCHING_RULE = re.compile(r"Batching rule not implemented for (\S+?)\.?(?:\s|$)")


def explained(forward: TaskForward, execution: str) -> TaskForward:
    """``forward``, with torch's error for an operation without a vmap batching rule turned
    into a one-line :class:`~mamlpp.errors.ConfigError` that names the operation and the fix."""

    def run(
        params: Mapping[str, Tensor],
        x: Tensor,
        step: int,
        running: Mapping[str, Tensor] | None = None,
        stats_rows: int | None = None,
    ) -> tuple[Tensor, BatchStats]:
        try:
            if stats_rows is None:  # backbones that predate stats_rows keep working
                return forward(params, x, step, running)
            return forward(params, x, step, running, stats_rows)
        except RuntimeError as error:
            found = _NO_BATCHING_RULE.search(str(error))
            if found is None:
                raise
            raise ConfigError(
                f"the network uses {found.group(1)}, which torch.func.vmap cannot batch over "
                f"tasks (no batching rule), as execution={execution!r} does; run the tasks one "
                'at a time: MAMLpp(..., execution="loop"), or --set train.execution=loop '
                "from the command line"
            ) from error

    return run


def check_execution(execution: str) -> str:
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    return execution


def task_batched_forward(backbone: Backbone, execution: str) -> TaskForward:
    """The forward of ``backbone`` for ``execution`` (see the module docstring)."""
    check_execution(execution)
    if execution == "batched":  # a ModuleBackbone's runs under vmap
        return explained(backbone.task_batched_forward, execution)
    if execution == "loop":
        return looped(backbone.functional_forward)
    return explained(vmapped(backbone.functional_forward), execution)
