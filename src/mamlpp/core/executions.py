"""Ways to run a meta-batch: implementations of the task-batched forward contract.

The algorithm (:mod:`mamlpp.core.algorithm`) is written once against::

    forward(params {name: [B, ...]}, x [B, n, ...], bn: BatchNormContext)
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
import typing
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from mamlpp.core.types import BatchNormContext, BatchStats, Forwards, TaskForward
from mamlpp.errors import ConfigError

# The ways to run the tasks of a call, named once here (the config, the learner, the step
# runner's execution choice and ``mamlpp bench`` read them).
Execution = Literal["batched", "loop", "vmap"]
EXECUTIONS: tuple[Execution, ...] = typing.get_args(Execution)


def looped(per_task: TaskForward) -> TaskForward:
    """A task-batched forward that runs ``per_task`` once per task and stacks the results."""

    def forward(
        params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        results = [
            per_task({n: t[b] for n, t in params.items()}, x[b], bn) for b in range(x.shape[0])
        ]
        logits = torch.stack([r[0] for r in results])  # [B, n, N]
        stats = {
            layer: (
                torch.stack([r[1][layer][0] for r in results]),  # [B, C]
                torch.stack([r[1][layer][1] for r in results]),
            )
            for layer in results[0][1]
        }
        return logits, stats

    return forward


def vmapped(per_task: TaskForward) -> TaskForward:
    """A task-batched forward that maps ``per_task`` over the task dimension with vmap (the
    batch-norm context, with the stored statistics shared by all tasks, is not mapped)."""

    def forward(
        params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        def one(p: dict[str, Tensor], xb: Tensor) -> tuple[Tensor, BatchStats]:
            return per_task(p, xb, bn)

        return torch.func.vmap(one)(dict(params), x)

    return forward


# torch's message for an operation that vmap cannot batch, e.g. "Batching rule not implemented
# for aten::gru.input. We could not generate a fallback."
_NO_BATCHING_RULE = re.compile(r"Batching rule not implemented for (\S+?)\.?(?:\s|$)")


def explained(forward: TaskForward, execution: str) -> TaskForward:
    """``forward``, with torch's error for an operation without a vmap batching rule turned
    into a one-line :class:`~mamlpp.errors.ConfigError` that names the operation and the fix."""

    def run(
        params: Mapping[str, Tensor], x: Tensor, bn: BatchNormContext
    ) -> tuple[Tensor, BatchStats]:
        try:
            return forward(params, x, bn)
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


def check_execution(execution: str) -> Execution:
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    return typing.cast(Execution, execution)


def task_batched_forward(backbone: Forwards, execution: str) -> TaskForward:
    """The forward of ``backbone`` for ``execution`` (see the module docstring)."""
    check_execution(execution)
    if execution == "batched":  # a ModuleBackbone's runs under vmap
        return explained(backbone.task_batched_forward, execution)
    if execution == "loop":
        return looped(backbone.functional_forward)
    return explained(vmapped(backbone.functional_forward), execution)
