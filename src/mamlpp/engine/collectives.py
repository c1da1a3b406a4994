"""The collectives of data-parallel meta-training, on PyTorch's own engine (gloo or NCCL).

``torchrun --nproc_per_node=G -m mamlpp train ...`` (or ``mamlpp train --nproc G``, which
starts torchrun through :mod:`mamlpp.cli.launch`) starts G processes. Each holds a full copy of
the learner and Adam, and computes ``B / G`` of the ``B`` tasks of every meta-batch. Per outer
step (:func:`mamlpp.core.outer_step.outer_step`):

* tasks: global iteration ``g`` trains on ids ``g*B .. g*B+B-1`` of the counter-based sampler;
  rank ``r`` takes the contiguous block ``g*B + r*B/G .. g*B + (r+1)*B/G - 1``, so the union over
  ranks is exactly the single-process meta-batch, and rank order is task order;
* gradients: each rank's loss is already divided by the whole meta-batch (``total_tasks``), so
  one all-reduce SUM of the flattened gradients gives the single-process gradient; every rank
  then takes the same Adam step from the same state and the copies never drift apart;
* per-step BN running statistics: every task's batch statistics are all-gathered in task order
  and folded exactly as one process folds them. Never SyncBatchNorm: it would pool statistics
  *across* tasks, which is a different model (MAML++ normalises each task by itself);
* metrics: the loss (a partial sum on each rank) is summed, means over tasks are averaged.

Not ``DistributedDataParallel``: DDP's hooks fire on ``.backward()`` of one forward pass and do
not support ``torch.autograd.grad`` or double backward through the inner loop, and its buffer
broadcast breaks when several forward passes (S inner steps) precede one backward. The one
all-reduce here is all that data parallelism over tasks needs.

Evaluation tasks are sharded the same way (contiguous blocks of ``0..n-1``) and their per-task
accuracies gathered in task order, so for the same weights accuracy and the 95% CI are those of
one process. Each step equals the one-process step up to rounding (the gradient sum runs in
another order); over a run the float32 trajectories drift apart as any two such runs do
(docs/distributed.md).

Files: only rank 0 reads and writes the run folder; what the other ranks need from it (the
resume checkpoint, the test ensemble) is broadcast from rank 0, so nodes need no shared disk.

Errors: the job prints one line, and stops in step; how is :mod:`mamlpp.engine.job_errors`.
Every collective here runs inside its :func:`~mamlpp.engine.job_errors.peer_failures`, which
turns a peer's failure into one line for the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

# Imported here, before any process group exists, for its side effect:
# torch.distributed.nn.functional gives ten functions the default argument group=group.WORLD,
# evaluated at import. Imported after init_process_group (torch imports it lazily, through
# torch._dynamo, when the first optimizer is built), they hold the default group, so destroying
# it at the end of a run left gloo's threads (pt_gloo_runloop, gloo_tcp_loop) running into the
# interpreter's teardown, where a rank once aborted after a finished run ("terminate called
# without an active exception"). Imported first, they hold None.
import torch.distributed.nn  # noqa: F401
from torch import Tensor

from mamlpp.core.types import PassStats
from mamlpp.engine.job_errors import (
    DistributedError,
    abandon,
    default_store,
    leave,
    peer_failures,
)
from mamlpp.errors import ConfigError, MamlppError

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (``WORLD_SIZE`` and ``RANK`` are set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def check_divisible(tasks_per_batch: int, world_size: int) -> None:
    """B tasks split into equal shares over G processes, or a one-line error."""
    if tasks_per_batch % world_size:
        raise ConfigError(
            f"train.tasks_per_batch={tasks_per_batch} is not divisible by {world_size} "
            f"processes: choose a meta-batch that is a multiple of {world_size} "
            f"(e.g. {world_size * max(1, tasks_per_batch // world_size)})"
        )


def sync_in_graph(setting: str, backend: str | None) -> bool:
    """``train.graph_sync``: the collectives inside the CUDA graph (``"in-graph"``) or eagerly
    between the replays of its two phases (``"after-replay"``). ``"auto"``: inside for NCCL, whose
    collectives a graph can record, and for one process (``backend`` None: no collectives);
    after the replay for any other backend (gloo cannot be captured)."""
    if setting == "auto":
        return backend in (None, "nccl")
    if setting not in ("in-graph", "after-replay"):
        raise ConfigError(f"graph_sync must be auto, in-graph or after-replay, got {setting!r}")
    return setting == "in-graph"


def block(count: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``0..count-1`` (sizes differ by at most one)."""
    return range(rank * count // world_size, (rank + 1) * count // world_size)


@dataclass
class Distributed:
    """This process's place in a data-parallel job, and the collectives its runners use.

    Implements :class:`mamlpp.core.outer_step.StepSync` (gradients, statistics, metrics) and
    :class:`mamlpp.run.evaluate.TaskSharding` (evaluation tasks).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone touches the run folder."""
        return self.rank == 0

    # -- training tasks ---------------------------------------------------------------------
    def shard(self, task_ids: Tensor) -> Tensor:
        """This rank's block of a meta-batch's task ids ``[B]`` -> ``[B / G]``."""
        check_divisible(task_ids.numel(), self.world_size)
        share = task_ids.numel() // self.world_size
        return task_ids[self.rank * share : (self.rank + 1) * share]

    # -- StepSync ---------------------------------------------------------------------------
    def reduce_gradients(self, parameters: list[Tensor]) -> None:
        """Sum ``.grad`` over ranks in place: ONE all-reduce of all gradients, flattened.

        The gradients are copied into one buffer ``[sum of numel]`` (one collective per step
        instead of one per tensor: latency, not bandwidth, dominates these small models).
        """
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one dtype: the learner's
        with peer_failures():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def gather_stats(self, stats: PassStats) -> PassStats:
        """Every rank's ``mean/var [b, P, C]`` -> ``[G*b, P, C]`` in task order (one gather)."""
        names = sorted(stats.values)
        parts = [t for bn in names for t in stats.values[bn]]  # mean, var of each BN layer
        if not parts:
            return stats
        local = parts[0].shape[0]
        flat = torch.cat([t.reshape(local, -1) for t in parts], dim=1)  # [b, X]
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        with peer_failures():
            dist.all_gather(gathered, flat)
        whole = torch.cat(gathered)  # [G*b, X], rank order = task order
        pieces = whole.split([t[0].numel() for t in parts], dim=1)
        out = [p.reshape(-1, *t.shape[1:]) for p, t in zip(pieces, parts, strict=True)]
        values = {bn: (out[2 * i], out[2 * i + 1]) for i, bn in enumerate(names)}
        return PassStats(values, stats.rows)

    def reduce_metrics(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Means over tasks averaged over ranks (equal shares); ``loss`` summed (each rank's
        loss is its part of the whole meta-batch's loss). One all-reduce."""
        names = sorted(metrics)
        flat = torch.cat([metrics[k].reshape(-1).to(metrics["loss"].dtype) for k in names])
        with peer_failures():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        pieces = flat.split([metrics[k].numel() for k in names])
        out = {}
        for name, piece in zip(names, pieces, strict=True):
            value = piece if name == "loss" else piece / self.world_size
            out[name] = value.reshape(metrics[name].shape).to(metrics[name].dtype)
        return out

    # -- TaskSharding (evaluation) ------------------------------------------------------------
    def my_tasks(self, tasks: int) -> range:
        """This rank's block of the evaluation task ids ``0..tasks-1``."""
        return block(tasks, self.rank, self.world_size)

    def gather_tasks(self, values: Tensor, tasks: int) -> Tensor:
        """Per-task values of every rank's block, ``[n_r, ...]`` -> ``[tasks, ...]`` in task
        order (blocks may differ in size by one, so they are padded for the gather)."""
        sizes = [len(block(tasks, r, self.world_size)) for r in range(self.world_size)]
        padded = values.new_zeros((max(sizes), *values.shape[1:]))
        padded[: values.shape[0]] = values
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        with peer_failures():
            dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])

    # -- coordination -------------------------------------------------------------------------
    def barrier(self) -> None:
        with peer_failures():
            dist.barrier()

    def from_writer(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0 only (it may read files), its result broadcast to every rank.

        A :class:`~mamlpp.errors.MamlppError` on rank 0 is raised on every rank, so a bad run
        folder stops the whole job with one message instead of leaving the others waiting.
        """
        box: list[Any] = [None]
        if self.is_writer:
            try:
                box[0] = ("ok", make())
            except MamlppError as error:
                box[0] = ("error", error)
        with peer_failures():
            dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            if not self.is_writer:  # rank 0 prints it
                value.reported_elsewhere = True
            raise value
        return value

    def local_first(self, make: Callable[[], T]) -> T:
        """``make()`` on local rank 0 of each node first, then on the node's other ranks (a
        download into the node's data folder happens once, the others then find it)."""
        if self.local_rank != 0:
            self.barrier()
        value = make()
        if self.local_rank == 0:
            self.barrier()
        return value

    def abandon(self, error: BaseException) -> None:
        """Leave the job after ``error``, telling the peers why
        (:func:`mamlpp.engine.job_errors.abandon`)."""
        abandon(self.rank, self.world_size, error)

    def shutdown(self) -> None:
        """Leave the job at its orderly end, rank 0 last
        (:func:`mamlpp.engine.job_errors.leave`)."""
        leave(self.rank, self.world_size)


def init_from_env(device: torch.device, timeout_s: float | None = None) -> Distributed | None:
    """Join the job torchrun started (None when not under torchrun, or for one process).

    The backend follows the device: NCCL for CUDA (rank ``r`` uses GPU ``LOCAL_RANK``), gloo on
    the CPU. ``timeout_s`` bounds how long joining and each collective wait for a rank that
    stopped answering (default: ``$MAMLPP_DIST_TIMEOUT`` seconds, else 1800).
    """
    if not launched_by_torchrun():
        return None
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get("MAMLPP_DIST_TIMEOUT", "1800"))
        except ValueError:
            raise ConfigError("MAMLPP_DIST_TIMEOUT must be a number of seconds") from None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world == 1:
        return None  # one process: exactly the single-process path, no process group
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            error = ConfigError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                "start at most one process per GPU (--nproc_per_node)"
            )
            error.reported_elsewhere = False  # type: ignore[attr-defined]  # rank 0 may not see it
            raise error
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not {device}")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        default_store()  # the error protocol needs it: fail now, not at the end of a run
    except MamlppError as missing:  # every rank meets it: rank 0 prints it
        raise DistributedError(str(missing), reported_elsewhere=rank != 0) from None
    return Distributed(rank, world, local_rank, backend, device)
