"""``run_training``: train (or continue) a run in its folder, test its ensemble, write the
summary."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from mamlpp.data import FewShotSplit
from mamlpp.engine.collectives import Distributed, check_divisible
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.checkpoint import epoch_of, top_k_epochs
from mamlpp.run.evaluate import EvalResult, task_fingerprint
from mamlpp.run.experiment import ExperimentConfig
from mamlpp.run.lifecycle import check_run_folder, prepare_run
from mamlpp.run.run_dir import RunDir, locked, write_json
from mamlpp.run.trainer import Trainer


def summarise(trainer: Trainer, result: EvalResult, ensemble: list[Path]) -> dict[str, Any]:
    """The fields of summary.json."""
    config, t = trainer.config, trainer.config.train
    iterations = t.epochs * t.iterations_per_epoch
    accuracy_of = {int(e): a for e, a in trainer.history}
    best = top_k_epochs(trainer.history, 1)
    return {
        "preset": config.preset,
        "dataset": config.data.dataset,
        "ways": config.data.ways,
        "shots": config.data.shots,
        # The techniques that took effect: one switched on but idle in this run (DA whose
        # second order would start after the last epoch, ...) is left out, as warned at start.
        "techniques": config.active_techniques,
        "test_accuracy": result.accuracy,
        "test_ci95": result.ci95,
        "test_loss": result.loss,
        "test_tasks": result.num_tasks,
        "test_fingerprint": task_fingerprint(trainer.samplers["test"], result.num_tasks),
        "data_fingerprint": trainer.data_record["fingerprint"],  # data.json has the record
        "ensemble_size": result.ensemble_size,
        "ensemble_epochs": [epoch_of(p) for p in ensemble if epoch_of(p) is not None],
        "best_val_epoch": best[0] if best else None,
        "best_val_accuracy": accuracy_of[best[0]] if best else None,
        "epochs": t.epochs,
        "iterations": iterations,
        "train_time_s": trainer.train_seconds,  # in training iterations only
        # Iterations, validations and checkpoints: what a time budget (ablate) plans for.
        "fit_time_s": trainer.fit_seconds,
        # Training, validation, checkpoints and the test over all sessions (not data loading).
        "wall_time_s": trainer._wall_now(),
        "iterations_per_second": iterations / max(trainer.train_seconds, 1e-9),
        "device": str(trainer.device),
        "world_size": trainer.world_size,  # processes of the data-parallel job (1: none)
        # How iterations ran: graph or eager (and why), precision, execution and its timings.
        "training_path": {
            **trainer.step_runner.describe(),
            "execution_timings_s": trainer.execution_timings,
        },
    }


def run_training(
    config: ExperimentConfig,
    run: RunDir,
    splits: dict[str, FewShotSplit],
    device: torch.device,
    *,
    resume: bool = False,
    progress: bool = True,
    out: TextIO | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    dist: Distributed | None = None,
) -> dict[str, Any]:
    """Train (or continue) the run in ``run``, then evaluate the test ensemble in the same
    process and write ``summary.json``. Returns the summary.

    The trainer is built before the folder is touched, so impossible episode sizes are refused
    without leaving a stub run folder; the folder is locked against a second writer. Under
    ``dist`` (data parallel) every rank calls this; rank 0 alone checks, locks, prepares and
    writes the run folder and sends the resume checkpoint to the others."""
    writer = dist is None or dist.is_writer
    if dist is not None:
        check_divisible(config.train.tasks_per_batch, dist.world_size)
    if writer:
        check_run_folder(run, resume)
    try:
        trainer = Trainer(config, run, splits, device, out=out, progress=progress, dist=dist)
    except DataError as error:  # the data cannot give these episodes: a configuration error
        raise ConfigError(str(error)) from None
    with locked(run) if writer else contextlib.nullcontext():

        def prepare() -> dict[str, Any] | None:
            return prepare_run(config, run, resume, say=trainer._say, data=trainer.data_record)

        state = prepare() if dist is None else dist.from_writer(prepare)
        if state is not None:
            trainer.restore(state)
        if on_start is not None:
            on_start(trainer)
        threads = torch.get_num_threads()
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        try:
            trainer.fit()
            result, ensemble = trainer.test()
        finally:
            torch.set_num_threads(threads)  # a library call leaves no global trace
        summary = summarise(trainer, result, ensemble)
        if writer:
            write_json(run.summary, summary)
    trainer._say(f"test: {result.describe()}; summary in {run.summary}")
    return summary
