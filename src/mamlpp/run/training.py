"""``train_from_options``: what ``mamlpp train`` runs, from its options to the summary, on one
process or as one rank of a torchrun job; ``run_training``: train (or continue) a run in its
folder, test its ensemble, write the summary."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from mamlpp.data import FewShotSplit
from mamlpp.engine.collectives import (
    Distributed,
    check_divisible,
    init_from_env,
    launched_by_torchrun,
)
from mamlpp.engine.job_errors import DistributedError
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.build import resolve_device
from mamlpp.run.checkpoint import epoch_of, top_k_epochs
from mamlpp.run.datasource import load_splits
from mamlpp.run.evaluate import EvalResult, task_fingerprint
from mamlpp.run.experiment import ExperimentConfig
from mamlpp.run.lifecycle import (
    check_run_folder,
    checkpoint_kept_hint,
    choose_run_folder,
    prepare_run,
    resume_hint,
)
from mamlpp.run.presets import describe_config, resolve_config
from mamlpp.run.run_dir import RunDir, locked, write_json
from mamlpp.run.trainer import Trainer


@dataclass(frozen=True)
class TrainOptions:
    """What ``mamlpp train`` was asked for, as the command line gave it (built by the CLI)."""

    preset: str | None = None  # a named experiment; None: the file's, else quickstart
    config_file: str | None = None  # a TOML file of config overrides
    overrides: tuple[str, ...] = ()  # SECTION.KEY=VALUE, applied last
    out: str | None = None  # the run folder; None: runs/<preset>-<timestamp>
    resume: bool = False  # continue the run in ``out`` from its checkpoint
    quiet: bool = False  # no progress bars
    device: str = "auto"  # auto, cpu or cuda
    data_dir: str | None = None  # where the dataset's files are (None: the usual folders)
    download: bool = True  # fetch a missing dataset (announced) where the table allows it


def resolve_options(options: TrainOptions) -> tuple[ExperimentConfig, torch.device, RunDir | None]:
    """The configuration, the device and the given run folder (None: a new one, named later)
    of ``options``; a ``--resume`` without a preset or a file continues with the run's own
    resolved config.toml."""
    if options.resume and not options.out:
        raise ConfigError("--resume needs --out RUN_DIR (the run folder to continue)")
    run = RunDir(Path(options.out)) if options.out else None
    config_file: str | Path | None = options.config_file
    if run is not None and options.resume and config_file is None and options.preset is None:
        if run.config.is_file():
            config_file = run.config  # continue with the run's own resolved config
    config = resolve_config(options.preset, config_file, options.overrides)
    return config, resolve_device(options.device), run


def train_from_options(options: TrainOptions) -> dict[str, Any]:
    """``mamlpp train`` on this process: resolve the options, choose and check the run folder,
    load the data, then :func:`run_training`. Under torchrun this process is one rank: it
    joins the job first, rank 0 alone chooses the folder, and a failure becomes one error line
    for the job (:mod:`mamlpp.engine.job_errors`). Returns the summary."""
    config, device, given = resolve_options(options)

    def choose_folder() -> RunDir:  # on rank 0 only under torchrun: one folder, one clock
        return choose_run_folder(given, config, options.resume)

    if launched_by_torchrun():  # before joining the job: a bad size fails fast on every rank
        check_divisible(config.train.tasks_per_batch, int(os.environ["WORLD_SIZE"]))
    dist = init_from_env(device)  # None unless started by torchrun with several processes
    run = given
    try:
        if dist is not None:
            device = dist.device
        writer = dist is None or dist.is_writer
        run = choose_folder() if dist is None else dist.from_writer(choose_folder)
        if writer:
            world = f" on {dist.world_size} processes ({dist.backend})" if dist else ""
            verb = "resuming" if options.resume and run.config.is_file() else "run"
            print(f"{verb} {run.root}{world}: {describe_config(config)}")

        def load() -> dict[str, FewShotSplit]:
            progress = not options.quiet and writer
            return load_splits(
                config.data, options.data_dir, download=options.download, progress=progress
            )

        splits = load() if dist is None else dist.local_first(load)
        started: list[Trainer] = []  # the trainer, once training starts (for the Ctrl-C hint)
        try:
            summary = run_training(
                config,
                run,
                splits,
                device,
                resume=options.resume,
                progress=not options.quiet,
                dist=dist,
                on_start=started.append,
            )
        except KeyboardInterrupt:
            if not started or not writer:
                raise
            trainer = started[0]
            hint = resume_hint(
                run, trainer.step, trainer.saved_step, config.train.iterations_per_epoch
            )
            raise KeyboardInterrupt(hint) from None
    except BaseException as error:
        if dist is not None:
            dist.abandon(error)  # a peer may be gone: wait for none, but tell them why
            lost = isinstance(error, DistributedError) and not error.reported_elsewhere
            hint = checkpoint_kept_hint(run) if lost and dist.is_writer and run is not None else ""
            if hint:
                raise DistributedError(f"{error}{hint}") from None
        raise
    if dist is not None:
        dist.shutdown()
    return summary


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
    if writer:  # the trainer checks that the tasks per batch divide by the processes
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
