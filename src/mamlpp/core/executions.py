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
"""

from __future__ import annotations

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


def check_execution(execution: str) -> str:
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    return execution


def task_batched_forward(backbone: Backbone, execution: str) -> TaskForward:
    """The forward of ``backbone`` for ``execution`` (see the module docstring)."""
    check_execution(execution)
    if execution == "batched":
        return backbone.task_batched_forward
    if execution == "loop":
        return looped(backbone.functional_forward)
    return vmapped(backbone.functional_forward)
