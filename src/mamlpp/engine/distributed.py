"""Data-parallel meta-training on PyTorch's own distributed engine (torchrun; gloo or NCCL).

``torchrun --nproc_per_node=G -m mamlpp train ...`` (or ``mamlpp train --nproc G``) starts G
processes. Each holds a full copy of the learner and Adam, and computes ``B / G`` of the ``B``
tasks of every meta-batch. Per outer step (:func:`mamlpp.core.outer_step.outer_step`):

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

Errors: the job prints one line. A rank that stops with an error it reports itself posts its
exit code on the job's store before it leaves (:meth:`Distributed.abandon`); a peer whose next
collective fails finds it there and stops quietly with the same code. A peer that died without
a word is announced by one rank (rank 0 when it is alive). An error that every rank meets
(a configuration error) is printed by rank 0 only: the ``reported_elsewhere`` attribute of an
error, or its kind, tells ``mamlpp.cli.main`` whether this rank prints it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from mamlpp.core.types import PassStats
from mamlpp.errors import ConfigError, MamlppError

T = TypeVar("T")


# Keys on the job's store (torchrun's agent hosts it; without torchrun's agent, rank 0 does).
_REPORTED = "mamlpp/reported"  # "<rank> <exit code>": the first rank to stop with its own error
_GONE = "mamlpp/gone"  # how many ranks other than 0 left after an error (read the report)
_LOST = "mamlpp/lost"  # how many ranks announced a lost peer (only the first one prints)


class DistributedError(MamlppError):
    """Another process of the job failed or a collective timed out; this one stops too.

    ``reported_elsewhere``: another rank has already told the user why the job stops, so this
    one exits with ``exit_code`` (that rank's) without printing a line of its own."""

    def __init__(self, message: str, exit_code: int = 1, reported_elsewhere: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.reported_elsewhere = reported_elsewhere


def _store() -> Any:
    """The job's key-value store, or None (no process group, or it is gone)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - not initialised, or already destroyed
        return None


def _reported_code(error: BaseException) -> int | None:
    """The exit code of an error this rank reports itself (one line printed by the command
    line), or None: a lost peer is a consequence, and any other exception a crash."""
    if isinstance(error, DistributedError):
        return None
    if isinstance(error, MamlppError):
        return error.exit_code
    if isinstance(error, OSError):
        return 1  # mamlpp.cli.main prints it as one line with exit code 1
    return None


def _peer_failure(error: RuntimeError) -> DistributedError:
    """What a failed collective means for this rank.

    A peer that stopped with an error it reported itself posted its exit code on the store
    (:meth:`Distributed.abandon`): this rank stops quietly with that code. Otherwise a peer died
    or stopped answering, and one rank says so: the first to claim it on the store, rank 0 (the
    one that knows the run folder, see ``mamlpp train``) given a second's head start."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    store = _store()
    try:
        if store is not None and store.check([_REPORTED]):
            rank, code = store.get(_REPORTED).decode().split()
            return DistributedError(
                f"process {rank} of the distributed job stopped with an error (exit code {code})",
                exit_code=int(code),
                reported_elsewhere=True,
            )
    except Exception:  # noqa: BLE001 - the store went with its host
        pass
    message = f"another process of the distributed job failed or stopped answering ({first})"
    return DistributedError(message, reported_elsewhere=not _first_to_announce(store))


def _first_to_announce(store: Any) -> bool:
    """Claim the announcement of a lost peer; True if this rank is first (or cannot tell)."""
    if store is None:
        return True
    try:
        if dist.get_rank() != 0:  # poll: a store wait that times out logs warnings
            deadline = time.monotonic() + 1.0
            while not store.check([_LOST]) and time.monotonic() < deadline:
                time.sleep(0.01)
        return int(store.add(_LOST, 1)) == 1
    except Exception:  # noqa: BLE001 - the store went with its host
        return True


@contextlib.contextmanager
def _peers() -> Iterator[None]:
    """A collective whose peer died (gloo: "Connection closed by peer"; NCCL: an error or a
    timeout) becomes one line for the user, or none when a peer already explained it."""
    try:
        yield
    except RuntimeError as error:  # c10d raises RuntimeError (or its DistError subclasses)
        raise _peer_failure(error) from None


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
        with _peers():
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
        with _peers():
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
        with _peers():
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
        with _peers():
            dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])

    # -- coordination -------------------------------------------------------------------------
    def barrier(self) -> None:
        with _peers():
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
        with _peers():
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

    def abandon(self, error: BaseException, timeout_s: float = 5.0) -> None:
        """Leave the job after ``error``, waiting for no peer that may be gone.

        An error this rank reports itself (a :class:`~mamlpp.errors.MamlppError` or an
        ``OSError``, printed as one line) is posted on the job's store first, so that the peers,
        whose next collective fails when this rank leaves, stop quietly with the same exit code
        instead of announcing a lost process. Where rank 0 hosts the store (not under torchrun's
        agent), it keeps the store up until the peers have read the report (at most
        ``timeout_s``)."""
        code = _reported_code(error)
        store = _store()
        if store is not None and code is not None:
            with contextlib.suppress(Exception):
                store.compare_set(_REPORTED, "", f"{self.rank} {code}")
        self.shutdown(orderly=False)
        if store is None:
            return
        if self.rank != 0:  # done with the store (a report, if any, was read before this)
            with contextlib.suppress(Exception):
                store.add(_GONE, 1)
            return
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            return  # torchrun's agent hosts the store: it outlives this process
        with contextlib.suppress(Exception):
            if not store.check([_REPORTED]):
                return  # no report to keep for the peers
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(Exception):
            while store.add(_GONE, 0) < self.world_size - 1 and time.monotonic() < deadline:
                time.sleep(0.01)

    def shutdown(self, orderly: bool = True, timeout_s: float = 60.0) -> None:
        """Leave the job; ``orderly=False`` (after an error) just leaves, waiting for nobody.

        An orderly exit leaves in step. Rank 0 hosts torchrun's rendezvous store in its process, so
        it leaves last: every other rank says on the store that it has left the process group,
        and rank 0 waits for that before it tears down. (A rank whose store vanished while it
        was tearing down aborted: "terminate called without an active exception", exit -6.)"""
        if not dist.is_initialized():
            return
        if not orderly:
            dist.destroy_process_group()
            return
        store = dist.distributed_c10d._get_default_store()
        with contextlib.suppress(Exception):  # a peer that already failed: just leave
            dist.barrier()
        if self.rank != 0:
            dist.destroy_process_group()
            with contextlib.suppress(Exception):
                store.add("mamlpp/left", 1)
            return
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(Exception):
            while store.add("mamlpp/left", 0) < self.world_size - 1:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        dist.destroy_process_group()


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
    return Distributed(rank, world, local_rank, backend, device)
