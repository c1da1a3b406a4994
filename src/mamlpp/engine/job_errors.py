"""How a data-parallel job stops: one error line for the whole job, and an exit in step.

A job of G processes (:mod:`mamlpp.engine.collectives`) reports an error the way one process
does (docs/distributed.md, "Errors"):

* a rank that stops with an error it reports itself (a :class:`~mamlpp.errors.MamlppError` or
  an ``OSError``: one line printed by ``mamlpp.cli.main``) posts ``"<rank> <exit code>"`` on
  the job's key-value store before it leaves (:func:`abandon`); a peer whose next collective
  then fails (:func:`peer_failures`) finds it there and stops quietly with the same code;
* a peer that died without a word is announced by one rank, rank 0 when it is alive
  (:func:`peer_failures`);
* an error that every rank meets (a configuration error) is printed by rank 0 only: the
  ``reported_elsewhere`` attribute of an error, or its kind, tells ``mamlpp.cli.main`` whether
  this rank prints it.

The store is the one the job's rendezvous made (torchrun's agent hosts it; without the agent,
rank 0's process does, so rank 0 leaves last: :func:`leave`). Torch reaches it only through a
private function, wrapped once here (:func:`default_store`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from mamlpp.errors import MamlppError

# Keys on the job's store.
_REPORTED = "mamlpp/reported"  # "<rank> <exit code>": the first rank to stop with its own error
_GONE = "mamlpp/gone"  # how many ranks other than 0 left after an error (read the report)
_LOST = "mamlpp/lost"  # how many ranks announced a lost peer (only the first one prints)
_LEFT = "mamlpp/left/"  # + rank: that rank (not 0) has left the process group in an orderly exit

# How long a rank other than 0 lets rank 0 be the first to announce a lost peer.
_ANNOUNCE_HEAD_START_S = 1.0
# The period of the two store polls below (see _poll_until for why they poll).
_POLL_S = 0.01


class DistributedError(MamlppError):
    """Another process of the job failed or a collective timed out (or, as the job starts, this
    torch cannot reach the job's store); this one stops too.

    ``reported_elsewhere``: another rank has already told the user why the job stops, so this
    one exits with ``exit_code`` (that rank's) without printing a line of its own."""

    def __init__(self, message: str, exit_code: int = 1, reported_elsewhere: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.reported_elsewhere = reported_elsewhere


def default_store() -> dist.Store:
    """The key-value store of the default process group (the one its rendezvous made).

    torch offers no public accessor; this is the one place that calls the private
    ``torch.distributed.distributed_c10d._get_default_store`` (tests/engine/test_job_store.py
    fails if torch removes or renames it). Raises ``ValueError`` (torch's) when no process
    group is initialised, and a one-line :class:`~mamlpp.errors.MamlppError` when this torch
    lacks the function."""
    private = getattr(dist.distributed_c10d, "_get_default_store", None)
    if private is None:
        raise MamlppError(
            f"torch {torch.__version__} has no torch.distributed.distributed_c10d."
            "_get_default_store, which data-parallel training needs to stop a job cleanly: "
            "install a torch release that has it"
        )
    store: dist.Store = private()
    return store


def _store_or_none() -> dist.Store | None:
    """The job's store on a failure path, or None (no process group, it is gone, or this torch
    cannot reach it): the protocol then degrades to every rank speaking for itself."""
    try:
        return default_store()
    except Exception:  # noqa: BLE001 - not initialised, already destroyed, or no accessor
        return None


def _poll_until(done: Callable[[], bool], timeout_s: float) -> None:
    """Wait until ``done()`` or ``timeout_s`` has passed, asking the store every 10 ms.

    A poll and not ``store.wait(keys, timeout)``: the two waits that use it time out in
    ordinary failures (rank 0 is the lost peer; a peer never reads the report), and a TCPStore
    wait that times out prints c10d warnings on stderr (``waitForInput ... timed out``), which
    would break the job's one error line. ``store.check`` and ``store.add`` answer at once."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(_POLL_S)


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
    (:func:`abandon`): this rank stops quietly with that code. Otherwise a peer died or stopped
    answering, and one rank says so: the first to claim it on the store, rank 0 (the one that
    knows the run folder, see ``mamlpp train``) given a second's head start."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    store = _store_or_none()
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


def _first_to_announce(store: dist.Store | None) -> bool:
    """Claim the announcement of a lost peer; True if this rank is first (or cannot tell)."""
    if store is None:
        return True
    try:
        if dist.get_rank() != 0:  # rank 0 first, unless it is the one lost (see _poll_until)
            _poll_until(lambda: store.check([_LOST]), _ANNOUNCE_HEAD_START_S)
        return int(store.add(_LOST, 1)) == 1
    except Exception:  # noqa: BLE001 - the store went with its host
        return True


@contextlib.contextmanager
def peer_failures() -> Iterator[None]:
    """Around a collective: a peer that died (gloo: "Connection closed by peer"; NCCL: an error
    or a timeout) becomes one line for the user, or none when a peer already explained it."""
    try:
        yield
    except RuntimeError as error:  # c10d raises RuntimeError (or its DistError subclasses)
        raise _peer_failure(error) from None


def abandon(rank: int, world_size: int, error: BaseException, timeout_s: float = 5.0) -> None:
    """Leave the job after ``error``, waiting for no peer that may be gone.

    An error this rank reports itself (a :class:`~mamlpp.errors.MamlppError` or an
    ``OSError``, printed as one line) is posted on the job's store first, so that the peers,
    whose next collective fails when this rank leaves, stop quietly with the same exit code
    instead of announcing a lost process. Where rank 0 hosts the store (not under torchrun's
    agent), it keeps the store up until the peers have read the report (at most
    ``timeout_s``)."""
    code = _reported_code(error)
    store = _store_or_none()
    if store is not None and code is not None:
        with contextlib.suppress(Exception):
            store.compare_set(_REPORTED, "", f"{rank} {code}")
    if dist.is_initialized():
        dist.destroy_process_group()
    if store is None:
        return
    if rank != 0:  # done with the store (a report, if any, was read before this)
        with contextlib.suppress(Exception):
            store.add(_GONE, 1)
        return
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return  # torchrun's agent hosts the store: it outlives this process
    with contextlib.suppress(Exception):
        if not store.check([_REPORTED]):
            return  # no report to keep for the peers
    with contextlib.suppress(Exception):  # a peer may never read it (see _poll_until)
        _poll_until(lambda: store.add(_GONE, 0) >= world_size - 1, timeout_s)


def leave(rank: int, world_size: int, timeout_s: float = 60.0) -> None:
    """Leave the job in step, at its orderly end.

    Rank 0 may host the store in its process (not under torchrun's agent), so it leaves last:
    every other rank says on the store that it has left the process group, and rank 0 waits
    for that (``store.wait``, at most ``timeout_s``) before it tears down. (A rank whose store
    vanished while it was tearing down aborted: "terminate called without an active
    exception", exit -6.)"""
    if not dist.is_initialized():
        return
    store = default_store()
    with contextlib.suppress(Exception):  # a peer that already failed: just leave
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        with contextlib.suppress(Exception):
            store.set(f"{_LEFT}{rank}", "1")
        return
    with contextlib.suppress(Exception):  # a peer that never says so is not waited for longer
        store.wait([f"{_LEFT}{r}" for r in range(1, world_size)], timedelta(seconds=timeout_s))
    dist.destroy_process_group()
