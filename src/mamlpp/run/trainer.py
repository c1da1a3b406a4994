"""The training loop: epochs x iterations, schedules per epoch, validation, checkpoints, test.

The training stream is a pure function of (seed, global iteration): iteration ``g`` trains on
tasks ``g*B .. g*B+B-1`` of the training sampler, and the schedules (MSL weights, derivative
order, outer lr) are pure functions of the epoch. So a checkpoint with the model, Adam's state
and the position is all an exact resume needs; the RNG states are stored as well, for anything
that might draw from them.

Order of one epoch ``e`` (0-based; files and messages count epochs from 1)::

    outer lr <- lr(e); for each iteration: sample tasks, meta-loss, finite check, backward,
    clamp, Adam step; a metrics line every ``log_every`` iterations (and an optional mid-epoch
    checkpoint); validation on fixed tasks -> "val" line; checkpoint: epoch file if in the top-k,
    then latest.pt, then prune epoch files that left the top-k.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

from mamlpp.data import FewShotSplit
from mamlpp.engine.collectives import Distributed, check_divisible, sync_in_graph
from mamlpp.engine.step_runner import MetaStepRunner, choose_execution
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.run.build import build_learner
from mamlpp.run.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    capture_rng,
    restore_rng,
    top_k_epochs,
)
from mamlpp.run.data_record import data_record
from mamlpp.run.episodes import episode_sampler
from mamlpp.run.evaluate import EvalResult, evaluate, member_from_state
from mamlpp.run.experiment import ExperimentConfig, check_resumable
from mamlpp.run.lifecycle import kept_top_k
from mamlpp.run.run_dir import MetricsLog, RunCheckpoints, RunDir
from mamlpp.util.progress import progress_bar

if TYPE_CHECKING:
    from tqdm import tqdm


class NonFiniteLoss(MamlppError):
    """The meta-loss became NaN or infinite; training stops, the last good checkpoint stays."""


@dataclass
class _Window:
    """Detached per-iteration metrics since the last metrics line (summed at log time, so the
    device is synchronised once per line, not once per iteration)."""

    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, metrics: dict[str, torch.Tensor], seconds: float) -> None:
        for key in ("loss", "accuracy", "step_losses", "step_accuracies", "support_losses"):
            self.values.setdefault(key, []).append(metrics[key])
        self.seconds += seconds

    def __len__(self) -> int:
        return len(self.values.get("loss", []))

    def means(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, items in self.values.items():
            mean = torch.stack(items).double().mean(0)
            out[key] = float(mean) if mean.dim() == 0 else mean.tolist()
        return out


class Trainer:
    """Owns one run: learner, optimiser, samplers, run folder. ``fit()`` then ``test()``."""

    def __init__(
        self,
        config: ExperimentConfig,
        run: RunDir,
        splits: dict[str, FewShotSplit],
        device: torch.device,
        *,
        out: TextIO | None = None,
        progress: bool = True,
        dist: Distributed | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.device = device
        self.out = out if out is not None else sys.stdout
        # Data-parallel (mamlpp.engine.collectives): this rank's share of each meta-batch; only
        # rank 0 writes files or prints.
        self.dist = dist
        self.show_progress = progress and self.is_writer
        # Built layer by layer: what the run reads (data record, samplers), then the learner
        # (run/build -> nn -> core), then the engine that steps it.
        d, e = config.data, config.eval
        in_channels = splits["train"].image_shape[0]
        self.shape = list(splits["train"].image_shape)
        # Which data this run trains on (data.json and every checkpoint; mamlpp.run.data_record)
        self.data_record = data_record(d.dataset, splits)
        if self.shape[1:] != [d.image_size, d.image_size]:
            raise ConfigError(
                f"data.image_size={d.image_size}, but the {d.dataset} images are "
                f"{self.shape[1]}x{self.shape[2]}"
            )
        seed = config.train.seed
        self.samplers = {
            "train": episode_sampler(config, splits["train"], "train", seed, device),
            "val": episode_sampler(config, splits["val"], "val", e.val_seed, device),
            "test": episode_sampler(config, splits["test"], "test", e.test_seed, device),
        }
        self.learner = build_learner(config, in_channels, device)
        t = config.train
        # "auto": on CUDA the candidates are measured on the first batch (see choose_execution);
        # on the CPU the batched path is the measured fastest.
        self._measure_execution = t.execution == "auto" and device.type == "cuda" and t.cuda_graph
        self.learner.execution = "batched" if t.execution == "auto" else t.execution
        if dist is not None:
            check_divisible(config.train.tasks_per_batch, dist.world_size)
        in_graph = sync_in_graph(t.graph_sync, None if dist is None else dist.backend)
        # One outer step everywhere (mamlpp.core.outer_step); on CUDA it is captured once as a CUDA
        # graph and replayed, on the CPU it runs eagerly.
        self.step_runner = MetaStepRunner(
            self.learner,
            use_cuda_graph=t.cuda_graph,
            precision=t.precision,
            fallback=t.graph_fallback,
            sync=dist,
            sync_in_graph=in_graph,
        )
        self.optimizer = self.step_runner.optimizer
        self.execution_timings: dict[str, float] = {}
        # Position: the epoch in progress (0-based) and the next iteration within it.
        self.epoch = 0
        self.iteration = 0
        self.saved_step: int | None = None  # the step latest.pt holds (None: no checkpoint yet)
        self.history: list[list[float]] = []  # [[epoch (1-based), val accuracy], ...]
        # Epoch files kept: the top-k of the largest eval.top_k this run ever had, so re-testing
        # a run with a smaller top-k never deletes checkpoints.
        self.keep_top_k = config.eval.top_k
        self.train_seconds = 0.0  # time in training iterations, over all sessions
        self.fit_seconds: float | None = None  # wall time when fit() ended
        self._session_start = time.perf_counter()
        self._wall_at_start = 0.0
        # Opened by fit(); until then (e.g. while calibration times train_step) metrics go
        # nowhere, no events are written and the bar is off.
        self.metrics: MetricsLog | _NoMetrics = _NoMetrics()
        self.writer: Any = None  # a tensorboard SummaryWriter while fit() runs, if enabled
        self.bar: tqdm = progress_bar(None, "train", enabled=False)

    # -- state ---------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Iterations done in the whole run."""
        return self.epoch * self.config.train.iterations_per_epoch + self.iteration

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.train.epochs

    @property
    def is_writer(self) -> bool:
        """One process writes the run folder: rank 0 of a data-parallel job."""
        return self.dist is None or self.dist.is_writer

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else self.dist.world_size

    def state(self) -> dict[str, Any]:
        epoch_for_schedule = min(self.epoch, self.config.train.epochs - 1)
        weights = self.learner.msl_weights(epoch_for_schedule)
        return {
            "format": FORMAT_VERSION,
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {
                "epoch": epoch_for_schedule,
                "outer_lr": self.learner.outer_lr(epoch_for_schedule),
                "second_order": self.learner.second_order_at(epoch_for_schedule),
                "msl_weights": weights,
            },
            "rng": capture_rng(),
            "progress": {"epoch": self.epoch, "iteration": self.iteration, "step": self.step},
            "config": self.config.to_dict(),
            "history": [list(item) for item in self.history],
            "timing": {"train_seconds": self.train_seconds, "wall_seconds": self._wall_now()},
            "shape": list(self.shape),
            "adapted_names": list(self.learner.adapted_names),
            # Informational: task ids fix the stream, so any world size may resume it.
            "world_size": self.world_size,
            "keep_top_k": self.keep_top_k,
            "data": self.data_record,
        }

    def restore(self, state: dict[str, Any]) -> None:
        check_resumable(state["config"], self.config.to_dict())
        self.learner.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        self.epoch = int(state["progress"]["epoch"])
        self.iteration = int(state["progress"]["iteration"])
        self.saved_step = self.step
        self.history = [[int(e), float(a)] for e, a in state["history"]]
        self.keep_top_k = max(self.keep_top_k, kept_top_k(state))
        self.train_seconds = float(state["timing"]["train_seconds"])
        self._wall_at_start = float(state["timing"]["wall_seconds"])
        self._session_start = time.perf_counter()

    def _wall_now(self) -> float:
        return self._wall_at_start + time.perf_counter() - self._session_start

    def _save(self, epoch_file: bool) -> None:
        """Checkpoint now: the epoch file first (if this epoch is in the top-k), then latest.pt,
        then prune; a kill between any two steps leaves a state that resume reconciles."""
        if not self.is_writer:
            return
        self.metrics.sync()
        state = self.state()
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        keep = set(top_k_epochs(self.history, self.keep_top_k))
        if epoch_file and self.epoch in keep:
            atomic_save(state, self.run.epoch_checkpoint(self.epoch))
        atomic_save(state, self.run.latest)
        self.saved_step = self.step
        self._prune(keep, upto=self.epoch)

    def _prune(self, keep: set[int], upto: int) -> None:
        for epoch, path in self.run.epoch_checkpoints().items():
            if epoch not in keep or epoch > upto:
                path.unlink(missing_ok=True)

    # -- training ------------------------------------------------------------------------------
    def fit(self) -> None:
        t = self.config.train
        self.metrics = MetricsLog(self.run.metrics) if self.is_writer else _NoMetrics()
        self.writer = _tensorboard_writer(self.run, t.tensorboard and self.is_writer, self.step)
        total = t.epochs * t.iterations_per_epoch
        if not self.done:
            for line in self.config.schedule_warnings():  # a technique on that never acts
                self._say(f"warning: {line}")
            self.choose_execution()
        self._say(f"training: {self.describe_path()}")
        self.bar = bar = progress_bar(total, "train", initial=self.step, enabled=self.show_progress)
        try:
            while not self.done:
                self._train_epoch()
                self._end_epoch()
            self.fit_seconds = self._wall_now()  # training, validations, checkpoints: all sessions
        finally:
            bar.close()
            self.metrics.close()
            if self.writer is not None:
                self.writer.close()

    def train_step(self, epoch: int) -> dict[str, torch.Tensor]:
        """ONE complete training meta-iteration, exactly as training runs it: this process's
        share of the tasks of the current global iteration (``step*B .. step*B+B-1``), epoch
        ``epoch``'s schedules, then the one outer step (on CUDA a replay of the captured graph;
        a non-finite loss stops training, checked every step on the CPU). The position is not
        advanced. Returns the detached metrics.

        Calibration (``ablate --time-budget``) times this very call, so a budget measured here
        is the budget that trains."""
        batch = self.config.train.tasks_per_batch
        first = self.step * batch
        ids = torch.arange(first, first + batch)
        tasks = self.samplers["train"].sample(ids if self.dist is None else self.dist.shard(ids))
        # Sets the epoch's outer lr and MSL weights itself (tensors inside a CUDA graph).
        metrics = self.step_runner(tasks, epoch)
        if self.device.type == "cpu" and not torch.isfinite(metrics["loss"]):
            self._non_finite(float(metrics["loss"]), self.iteration)  # a sync is free on the CPU
        return metrics

    def _train_epoch(self) -> None:
        t = self.config.train
        window = _Window()
        while self.iteration < t.iterations_per_epoch:
            start = time.perf_counter()
            metrics = self.train_step(self.epoch)
            self.iteration += 1
            window.add(metrics, time.perf_counter() - start)
            self.train_seconds += time.perf_counter() - start
            self.bar.update(1)
            end_of_epoch = self.iteration == t.iterations_per_epoch
            if self.iteration % t.log_every == 0 or end_of_epoch:
                self._log_window(window)
                window = _Window()
                mid_checkpoint = t.checkpoint_every and self.iteration % t.checkpoint_every == 0
                if mid_checkpoint and not end_of_epoch:
                    self._save(epoch_file=False)

    def choose_execution(self) -> None:
        """With ``train.execution=auto`` on CUDA: time each execution candidate's graph replays
        on a copy of the learner (first batch) and keep the fastest; otherwise nothing to do."""
        if not self._measure_execution or self.execution_timings:
            return
        batch = self.config.train.tasks_per_batch
        ids = torch.arange(0, batch)
        tasks = self.samplers["train"].sample(ids if self.dist is None else self.dist.shard(ids))
        choice, self.execution_timings = choose_execution(
            self.learner, tasks, precision=self.config.train.precision
        )
        if self.dist is not None:  # every rank runs what rank 0 measured fastest
            choice, self.execution_timings = self.dist.from_writer(
                lambda: (choice, self.execution_timings)
            )
        self.learner.execution = choice

    def describe_path(self) -> str:
        """One line: how iterations run (graph or eager, precision, execution)."""
        d = self.step_runner.describe()
        timings = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.execution_timings.items())
        measured = f" (measured: {timings})" if timings else ""
        fallback = f"; graph capture failed: {d['graph_fallback']}" if d["graph_fallback"] else ""
        sync = f", collectives {d['graph_sync']}" if self.dist is not None else ""
        return (
            f"{d['path']} on {d['device']}, precision {d['precision']}, "
            f"execution {d['execution']}{measured}{sync}{fallback}"
        )

    def _log_window(self, window: _Window) -> None:
        losses = torch.stack(window.values["loss"])
        finite = torch.isfinite(losses)
        if not bool(finite.all()):  # only reachable off the CPU (the CPU checks every step)
            first_bad = int((~finite).nonzero()[0, 0])
            self._non_finite(float(losses[first_bad]), self.iteration - len(window) + first_bad)
        means = window.means()
        epoch = self.epoch
        record = {
            "kind": "train",
            "epoch": epoch + 1,
            "iteration": self.iteration,
            "step": self.step,
            **means,
            "outer_lr": self.learner.outer_lr(epoch),
            "second_order": self.learner.second_order_at(epoch),
            "msl_weights": self.learner.msl_weights(epoch),
            "it_per_s": len(window) / max(window.seconds, 1e-9),
        }
        self.metrics.write(record)
        # refresh=False: the bar redraws at its own pace (every 30 s when logging to a file).
        self.bar.set_postfix(
            loss=f"{means['loss']:.4g}", acc=f"{means['accuracy']:.4g}", refresh=False
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", means["loss"], self.step)
            self.writer.add_scalar("train/accuracy", means["accuracy"], self.step)
            self.writer.add_scalar("train/outer_lr", record["outer_lr"], self.step)

    def _non_finite(self, value: float, iteration: int) -> None:
        t = self.config.train
        kept = self.run.latest if self.run.latest.is_file() else None
        where = f"epoch {self.epoch + 1}, iteration {iteration + 1}"
        step = self.epoch * t.iterations_per_epoch + iteration + 1
        keep = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint yet"
        # Reports show the run as failed; a resume truncates this line away (its step is past
        # the checkpoint's).
        self.metrics.write(  # (nowhere while calibration times a step)
            {"kind": "failed", "epoch": self.epoch + 1, "step": step, "value": repr(value)}
        )
        raise NonFiniteLoss(
            f"non-finite meta-loss ({value}) at {where} (global iteration {step}); training "
            f"stopped, {keep} (try a smaller meta.meta_lr or meta.inner_lr, or meta.grad_clip)"
        )

    def _end_epoch(self) -> None:
        result = self.validate()
        epoch_number = self.epoch + 1
        self.metrics.write(
            {
                "kind": "val",
                "epoch": epoch_number,
                "step": self.step,
                "accuracy": result.accuracy,
                "ci95": result.ci95,
                "loss": result.loss,
                "tasks": result.num_tasks,
                # Seconds since the run began (training, validations, checkpoints, over all
                # sessions): validation accuracy against wall time, for time-budget studies.
                "wall_s": self._wall_now(),
            }
        )
        if self.writer is not None:
            self.writer.add_scalar("val/accuracy", result.accuracy, self.step)
            self.writer.add_scalar("val/loss", result.loss, self.step)
        self.history.append([epoch_number, result.accuracy])
        lr = self.learner.outer_lr(self.epoch)
        order = "2nd order" if self.learner.second_order_at(self.epoch) else "1st order"
        self.epoch += 1
        self.iteration = 0
        self._save(epoch_file=True)
        self._say(
            f"epoch {epoch_number}/{self.config.train.epochs}: val {result.describe()} | "
            f"loss {result.loss:.3f} | lr {lr:.2e}, {order} | {self._wall_now():.0f} s"
        )

    def validate(self) -> EvalResult:
        e = self.config.eval
        return evaluate(
            self.learner, self.samplers["val"], e.val_tasks, e.batch_size, shards=self.dist
        )

    def _say(self, text: str) -> None:
        if not self.is_writer:
            return
        with self.bar.external_write_mode():  # clears the bar's line; it redraws afterwards
            print(text, file=self.out, flush=True)

    # -- test ----------------------------------------------------------------------------------
    def test(self, top_k: int | None = None, tasks: int | None = None) -> tuple[EvalResult, list]:
        """The ensemble of the top-k validation checkpoints on the fixed test tasks; returns
        the result and the ensemble's checkpoint paths."""
        e = self.config.eval
        k = e.top_k if top_k is None else top_k
        if self.dist is None:
            paths, states = _read_ensemble(self.run, k, self._say)
        else:  # rank 0 reads the checkpoints; the other ranks get them (no shared disk needed)
            paths, states = self.dist.from_writer(lambda: _read_ensemble(self.run, k, self._say))
        members = [
            member_from_state(self.learner, s, p, self.device)
            for p, s in zip(paths, states, strict=True)
        ]
        tasks = e.test_tasks if tasks is None else tasks
        result = evaluate(members, self.samplers["test"], tasks, e.batch_size, shards=self.dist)
        return result, paths


class _NoMetrics:
    """The metrics log of a rank that does not write (ranks > 0 of a data-parallel job)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _read_ensemble(
    run: RunDir, k: int, say: Callable[[str], None]
) -> tuple[list[Path], list[dict[str, Any]]]:
    """The top-k ensemble's files and model states, read as every command reads them."""
    members = RunCheckpoints(run, say).ensemble(k)
    return [m.path for m in members], [m.state["model"] for m in members]


def _tensorboard_writer(run: RunDir, enabled: bool, step: int):
    """A SummaryWriter when ``tensorboard`` is installed (events after ``step`` are purged on
    resume), else None."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed
        return None
    return SummaryWriter(str(run.tensorboard), purge_step=step if step else None)
