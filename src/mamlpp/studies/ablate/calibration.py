"""``--time-budget``: the largest budget that trains within a time, measured on the path that
trains.

For every variant a real :class:`~mamlpp.run.trainer.Trainer` is built (on CUDA it captures and
replays CUDA graphs, as training does) and its
:meth:`~mamlpp.run.trainer.Trainer.train_step`, the very call
an epoch makes, is timed once per schedule regime (MSL on/off x first/second order, as the
epochs will see them). Warm-up calls (eager steps and the graph capture on CUDA) are discarded,
and the device is synchronised before each clock read. A validation is timed the same way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mamlpp.core.schedules import msl_active, second_order_at
from mamlpp.errors import ConfigError
from mamlpp.run.experiment import ExperimentConfig
from mamlpp.run.run_dir import RunDir
from mamlpp.run.trainer import Trainer
from mamlpp.studies.ablate.grid import Variant
from mamlpp.studies.ablate.plan import Plan, run_config


def warmup_calls(trainer: Trainer) -> int:
    """Calls of one regime to discard: the fast step's eager warm-ups, its capture and one
    replay; on the eager path one call (first-use allocations)."""
    runner = trainer.step_runner
    return runner.warmup_steps + 2 if runner.use_cuda_graph else 1


def time_calls(
    step: Callable[[], Any], warmup: int, repeats: int, device: torch.device
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``step`` after ``warmup`` discarded ones."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def calibrate(
    plan: Plan,
    variants: Sequence[Variant],
    splits,
    device: torch.device,
    threads: int = 0,
    *,
    repeats: int = 3,
    safety: float = 0.9,
) -> tuple[int, dict[str, Any]]:
    """The largest budget (a multiple of the epochs) whose training and validations fit in
    ``plan.time_budget_s`` for every variant; returns it and the measurements."""
    seconds = plan.time_budget_s
    if seconds is None:
        raise ValueError("calibrate needs a plan with a time budget")  # a programming error
    probe = plan.probe()  # 1 iteration per epoch
    old_threads = torch.get_num_threads()
    measured: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:  # train_step writes nothing there
            for variant in variants:
                config = run_config(probe, variant, 0, threads)
                if config.train.threads:  # as run_training will run it
                    torch.set_num_threads(config.train.threads)
                trainer = Trainer(config, RunDir(Path(scratch)), splits, device, progress=False)
                trainer.choose_execution()  # the execution training will run (CUDA: measured)
                costs, epoch_cost = {}, 0.0  # epoch_cost: an iteration of every epoch, summed
                for (msl, second), epochs in _regimes(config).items():
                    step = _stepper(trainer, epochs[0])
                    times = time_calls(step, warmup_calls(trainer), repeats, device)
                    cost = statistics.median(times)
                    regime = f"msl={msl},second_order={second}"
                    costs[regime] = {"s_per_it": cost, "epochs": len(epochs)}
                    epoch_cost += cost * len(epochs)
                (val_s,) = time_calls(trainer.validate, 1, 1, device)
                per_epoch = iterations_per_epoch(
                    seconds, safety, epoch_cost, val_s * config.train.epochs
                )
                measured[variant.name] = {
                    "regimes": costs,
                    "val_s": val_s,
                    "iterations_per_epoch": per_epoch,
                    "timed": "Trainer.train_step",
                }
                speeds = ", ".join(
                    f"{k} {v['s_per_it'] * 1000:.1f} ms/it" for k, v in costs.items()
                )
                print(
                    f"calibration {variant.name}: {speeds}, validation {val_s:.2f} s -> "
                    f"{per_epoch} iterations per epoch",
                    flush=True,
                )
                if per_epoch < 1:
                    need = (epoch_cost + val_s * config.train.epochs) / safety
                    raise ConfigError(
                        f"--time-budget {seconds:g} s is too short for {variant.name} on "
                        f"{device}: one iteration per epoch and the validations need about "
                        f"{need:.0f} s"
                    )
    finally:
        torch.set_num_threads(old_threads)
    budget = min(m["iterations_per_epoch"] for m in measured.values()) * plan.epochs
    return budget, {
        "time_budget_s": seconds,
        "safety": safety,
        "device": str(device),
        "variants": measured,
        "budget": budget,
    }


def iterations_per_epoch(
    seconds: float, safety: float, epoch_cost: float, validations_s: float
) -> int:
    """Iterations per epoch whose training (``epoch_cost`` s: one iteration of every epoch)
    and validations land nearest ``safety * seconds``, never beyond ``seconds``.

    Nearest rather than rounded down: on a slow device one iteration per epoch is a large part
    of the budget (a CPU run of 30 s trained 83% of it rounding down)."""
    per_epoch = max(round((seconds * safety - validations_s) / epoch_cost), 0)
    if per_epoch * epoch_cost + validations_s > seconds:
        per_epoch -= 1
    return max(per_epoch, 0)


def _stepper(trainer: Trainer, epoch: int) -> Callable[[], None]:
    """One training iteration at ``epoch``'s schedules, then on to the next tasks."""

    def step() -> None:
        trainer.train_step(epoch)
        trainer.iteration += 1

    return step


def _regimes(config: ExperimentConfig) -> dict[tuple[bool, bool], list[int]]:
    """The epochs of each (MSL active, second order) combination."""
    regimes: dict[tuple[bool, bool], list[int]] = {}
    for epoch in range(config.train.epochs):
        key = (msl_active(epoch, config.meta), second_order_at(epoch, config.meta))
        regimes.setdefault(key, []).append(epoch)
    return regimes
