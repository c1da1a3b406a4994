"""The outer update, written once: meta-loss -> backward -> (reduce) -> clamp -> Adam -> statistics.

Every runner calls these functions: :meth:`MAMLpp.meta_step`, the trainer, the CUDA-graph fast path
(which records them into graphs) and distributed training (which passes a :class:`StepSync` that
all-reduces gradients and gathers statistics across processes).

Order, and why:

1. meta-loss of the meta-batch; the running statistics are *not* touched yet, the batch
   statistics of every pass are returned instead (so another process's tasks can join them);
2. ``loss.backward()``: meta-gradients of this process's tasks;
3. ``sync`` (distributed only): sum the gradients over processes and gather every task's batch
   statistics in task order, so the result equals one process running the whole meta-batch;
4. elementwise clamp of the network's gradients (``grad_clip``; not the learned inner rates);
5. the optimiser step;
6. fold the batch statistics into the per-step running statistics, task by task, pass by pass.

Phase 1 (:func:`outer_backward`: steps 1-2), :func:`synchronise` (step 3, the only
communication) and phase 2 (:func:`outer_update`: steps 4-6), composed by :func:`outer_step`. The
fast path records the composition as one CUDA graph, or each phase as its own graph with the
collectives run eagerly between the replays. Nothing in the phases reads a value on the host.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from mamlpp.core.types import MetaLearner, PassStats, TaskBatch


class StepSync(Protocol):
    """How processes of a data-parallel run agree within one outer step (see
    :mod:`mamlpp.engine.collectives`).

    ``world_size`` processes each hold ``B / world_size`` tasks of a meta-batch of ``B``.
    """

    world_size: int

    def reduce_gradients(self, parameters: list[Tensor]) -> None:
        """Sum each parameter's ``.grad`` over processes, in place."""
        ...

    def gather_stats(self, stats: PassStats) -> PassStats:
        """Every process's per-task batch statistics, concatenated in task order."""
        ...

    def reduce_metrics(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The whole meta-batch's metrics: each process's means over its tasks averaged over
        processes, and ``loss`` summed (each process's loss is its part of the total)."""
        ...


def outer_backward(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    epoch: int,
    *,
    msl_weights: Tensor | None = None,
    world_size: int = 1,
    set_grads_to_none: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], PassStats]:
    """Phase 1 on ``batch``, this process's ``B`` of
    ``world_size * B`` tasks: leaves the meta-gradients in ``.grad``, returns the detached
    metrics (means over its tasks; see :meth:`MAMLpp.meta_loss`) and the batch statistics.

    ``msl_weights`` (a ``[S]`` tensor) overrides the schedule's values while MSL is active (a
    captured graph reads new values from it each epoch). Inside a CUDA graph the gradients must
    stay allocated, so the fast path passes ``set_grads_to_none=False``. ``autocast_dtype`` (e.g.
    ``torch.bfloat16``) runs the forward passes under autocast; the backward pass follows the
    forward's dtypes and the optimiser works in float32, as PyTorch recommends.
    """
    device_type = batch.support_x.device.type
    total_tasks = batch.support_x.shape[0] * world_size
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss, metrics, stats = learner.meta_loss_and_stats(
            batch, epoch, msl_weights=msl_weights, total_tasks=total_tasks
        )
    optimizer.zero_grad(set_to_none=set_grads_to_none)
    loss.backward()
    return metrics, stats


def synchronise(
    learner: MetaLearner, sync: StepSync | None, metrics: dict[str, Tensor], stats: PassStats
) -> tuple[dict[str, Tensor], PassStats]:
    """Between the phases: gradients summed in place, statistics and metrics of the whole
    meta-batch (unchanged without ``sync``: one process holds the whole meta-batch)."""
    if sync is None:
        return metrics, stats
    sync.reduce_gradients([p for p in learner.meta_parameters() if p.grad is not None])
    stats = sync.gather_stats(stats)
    return sync.reduce_metrics(metrics), stats


def outer_update(learner: MetaLearner, optimizer: torch.optim.Optimizer, stats: PassStats) -> None:
    """Phase 2: clamp the gradients, take the optimiser step, fold the statistics in."""
    learner.clip_gradients_()
    optimizer.step()
    learner.fold_batch_stats(stats)


def outer_step(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    epoch: int,
    *,
    sync: StepSync | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """One meta-iteration at ``epoch``: :func:`outer_backward` (which takes ``options``),
    :func:`synchronise`, :func:`outer_update`. Returns the whole meta-batch's metrics."""
    world_size = 1 if sync is None else sync.world_size
    local = outer_backward(learner, optimizer, batch, epoch, world_size=world_size, **options)
    metrics, stats = synchronise(learner, sync, *local)
    outer_update(learner, optimizer, stats)
    return metrics
