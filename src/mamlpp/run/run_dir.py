"""The run folder: where a training run keeps its config, metrics, checkpoints and summary.

::

    RUN_DIR/
      config.toml          the resolved configuration (preset + file + --set)
      metrics.jsonl        one JSON object per line: "train" lines and one "val" line per epoch
      checkpoints/
        latest.pt          the newest state (exact resume starts here)
        epoch-NNNN.pt      the top-k epochs by validation accuracy (the test ensemble)
      data.json            the data the run trains on (mamlpp.run.data_record)
      eval-*.json          one per `mamlpp evaluate` score (RunDir.eval_record names them)
      summary.json         test accuracy, 95% CI, tasks, ensemble size, wall time, it/s
      tensorboard/         only when the optional extra is installed
      .lock                held by the process that trains in the folder (one writer at a time)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamlpp.errors import ConfigError, MamlppError
from mamlpp.run.checkpoint import (
    DamagedCheckpoint,
    epoch_checkpoint_name,
    epoch_of,
    load_checkpoint,
    top_k_epochs,
)
from mamlpp.run.experiment import ExperimentConfig, build_config, read_toml
from mamlpp.util.atomic import atomic_write


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def data(self) -> Path:
        return self.root / "data.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / epoch_checkpoint_name(epoch)

    def epoch_checkpoints(self) -> dict[int, Path]:
        """``{epoch: path}`` of the kept per-epoch checkpoints."""
        found = {}
        if self.checkpoints.is_dir():
            for path in self.checkpoints.glob("epoch-*.pt"):
                epoch = epoch_of(path)
                if epoch is not None:
                    found[epoch] = path
        return dict(sorted(found.items()))

    def eval_record(
        self,
        split: str,
        top_k: int,
        tasks: int,
        *,
        one_at_a_time: bool = False,
        episodes: str | None = None,
        other_data: str | None = None,
    ) -> Path:
        """Where ``mamlpp evaluate`` keeps one score, so that scores of different protocols
        never overwrite each other:
        ``eval-<split>-top<k>-<tasks>[-single][-<episodes>][-otherdata-<fingerprint>].json``.

        ``one_at_a_time``: each query image scored alone (``-single``). ``episodes``: only for a
        task protocol other than the run's own (``"random"``, ``"within-group"``).
        ``other_data``: only for data other than the run's, the first 8 characters of its
        fingerprint (``"*"`` gives a glob pattern for any of them).
        """
        name = f"eval-{split}-top{top_k}-{tasks}"
        name += "-single" if one_at_a_time else ""
        name += f"-{episodes}" if episodes else ""
        name += f"-otherdata-{other_data}" if other_data else ""
        return self.root / f"{name}.json"

    def has_training_state(self) -> bool:
        return self.latest.is_file()


@contextlib.contextmanager
def locked(run: RunDir) -> Iterator[None]:
    """Hold the run folder's lock while training writes into it; a second writer (another
    process, or another rank started by ``torchrun``) is refused with a one-line error.

    An advisory ``flock`` that the kernel releases when its holder exits, however it exits, so
    a lock file left by a killed process never blocks ``--resume``. Where ``fcntl`` does not
    exist (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not on POSIX)
        yield
        return
    run.root.mkdir(parents=True, exist_ok=True)
    handle = open(run.root / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (pid {holder})" if holder else ""
        raise ConfigError(
            f"{run.root} is in use by another mamlpp process{by}; wait for it to finish or "
            "choose another --out"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def default_run_dir(preset: str, base: Path = Path("runs"), now: float | None = None) -> Path:
    """``runs/<preset>-<YYYYmmdd-HHMMSS>``: MAML and MAML++ runs never share a folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = base / f"{preset}-{stamp}"
    suffix = 2
    while candidate.exists():
        candidate = base / f"{preset}-{stamp}-{suffix}"
        suffix += 1
    return candidate


def require_run_dir(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.config.is_file():
        raise ConfigError(f"{run.root} is not a mamlpp run folder (no config.toml)")
    return run


def read_run_config(run: RunDir) -> ExperimentConfig:
    """The run's resolved config.toml (complete, so no preset lookup is needed)."""
    return build_config(read_toml(run.config))


# ------------------------------------------------------------------------------ checkpoints


def warn(text: str) -> None:
    """A warning line on stderr (the default of :class:`RunCheckpoints`)."""
    print(text, file=sys.stderr, flush=True)


class NoIntactCheckpoint(MamlppError):
    """A run has checkpoints, but none of them can be read."""

    def __init__(self, problem: str, run: RunDir) -> None:
        super().__init__(f"no intact checkpoint in {run.checkpoints} ({problem})")
        self.problem = problem


@dataclass(frozen=True)
class Found:
    """A checkpoint that was read: its file and its state."""

    path: Path
    state: dict[str, Any]


class RunCheckpoints:
    """The checkpoints of a run folder, read the same way by every command: ``train --resume``,
    the test at the end of training, ``evaluate``, ``adapt`` and ``export``.

    A damaged file (truncated, empty, not a mamlpp checkpoint) is named in a one-line warning,
    once, and the intact files are used instead: the newest state is ``latest.pt``, else the
    newest intact epoch file (announced); the top-k ranking comes from the newest state's
    validation history; a damaged ensemble member is left out. Only a run with no intact
    checkpoint at all is an error.
    """

    def __init__(self, run: RunDir, say: Callable[[str], None] = warn) -> None:
        self.run = run
        self.say = say
        self._warned: set[Path] = set()
        self._newest: Found | None = None

    def read(self, path: Path) -> dict[str, Any] | None:
        """The checkpoint at ``path``, or None if it is damaged (named in a warning, once)."""
        try:
            return load_checkpoint(path)
        except DamagedCheckpoint as error:
            if path not in self._warned:
                self._warned.add(path)
                self.say(f"warning: {error}")
            return None

    def newest(self, using: str = "using {name}, the end of epoch {epoch}") -> Found | None:
        """``latest.pt``, else the newest intact epoch file; None when there is no checkpoint.

        Falling back is announced in one line: why latest.pt was not used, then ``using``
        (formatted with the file's ``name`` and ``epoch``). A run whose every checkpoint is
        damaged is an error."""
        if self._newest is not None:
            return self._newest
        latest, problem = self.run.latest, None
        if latest.is_file():
            try:
                self._newest = Found(latest, load_checkpoint(latest))
                return self._newest
            except DamagedCheckpoint as error:
                self._warned.add(latest)
                problem = str(error)
        elif self.run.epoch_checkpoints():
            problem = f"{latest} is missing"
        for epoch, path in sorted(self.run.epoch_checkpoints().items(), reverse=True):
            state = self.read(path)
            if state is None:
                continue
            self.say(f"warning: {problem}; {using.format(name=path.name, epoch=epoch)}")
            self._newest = Found(path, state)
            return self._newest
        if problem is not None:
            raise NoIntactCheckpoint(problem, self.run)
        return None

    def ensemble(self, k: int) -> list[Found]:
        """The top-``k`` intact epoch checkpoints by validation accuracy (best first), ranked by
        the newest state's history; a damaged one is left out (warned). With no epoch
        checkpoint, the newest state alone."""
        newest = self.newest("ranking the checkpoints by the history in {name} (epoch {epoch})")
        if newest is None:
            raise MamlppError(f"no checkpoints in {self.run.checkpoints}")
        kept = self.run.epoch_checkpoints()
        history = newest.state.get("history", [])
        members: list[Found] = []
        for epoch in top_k_epochs(history, len(history)):
            if len(members) == k:
                break
            if epoch not in kept:
                continue
            path = kept[epoch]
            state = newest.state if path == newest.path else self.read(path)
            if state is not None:
                members.append(Found(path, state))
        return members or [newest]


# ------------------------------------------------------------------------------ metrics.jsonl


class MetricsLog:
    """Append-only JSON lines; each line is flushed so a killed run loses at most one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json_text(record) + "\n")
        self._handle.flush()

    def sync(self) -> None:
        """Flush to disk (called before a checkpoint that refers to these lines)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


# Fields of metrics.jsonl lines that measure time (train: iterations per second, val: seconds
# since the run began): they differ between runs that are otherwise identical.
TIMING_FIELDS = frozenset({"it_per_s", "wall_s"})


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete lines (a torn last line from a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def run_status(summary: dict[str, Any] | None, metrics: list[dict[str, Any]], epochs: int) -> str:
    """A run's state from its files: "complete" (summary.json written), "failed in epoch N
    (non-finite loss)" (the trainer's last metrics line; a resume truncates it away), "epoch k/E"
    (validations so far) or "not started"."""
    if summary is not None:
        return "complete"
    if metrics and metrics[-1].get("kind") == "failed":
        return f"failed in epoch {metrics[-1]['epoch']} (non-finite loss)"
    if not metrics:
        return "not started"
    done = max((r["epoch"] for r in metrics if r.get("kind") == "val"), default=0)
    return f"epoch {done}/{epochs}"


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines up to iteration ``step`` (those the resumed checkpoint had seen):
    the resumed run writes the rest again, so nothing is duplicated."""
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for record in kept:
            handle.write(json_text(record) + "\n")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, in nested dicts,
    lists and tuples: JSON has no NaN, and strict parsers reject the ``NaN`` Python writes (a
    confidence interval over one task is undefined: null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(record: Any, indent: int | None = None, sort_keys: bool = True) -> str:
    """The one way mamlpp's records become JSON: strict (``allow_nan=False``), non-finite
    numbers written as null (:func:`finite`), keys sorted unless their order means something."""
    return json.dumps(finite(record), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (summary.json is read by `report` while runs may still be writing)."""
    text = json_text(data, indent=2)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
