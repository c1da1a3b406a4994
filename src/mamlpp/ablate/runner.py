"""Running an ablation: each pending (variant, seed) is a plain ``python -m mamlpp train ...
--resume`` subprocess, up to ``--jobs`` at once under :mod:`concurrent.futures`.

The parent loads (and if needed downloads) the data once and, for ``--time-budget``, measures
the budget; the workers then train with ``--no-download``. Each worker's output goes to its
run's ``train.log`` (and to the console with ``--jobs 1``); its ``ablate.json`` records the
command and the outcome. Interrupted, the workers are terminated; a re-run resumes them from
their checkpoints, and finished runs (with ``summary.json``) are skipped.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasource import load_splits
from ..format import duration
from ..runs import read_json, write_json
from ..train import resolve_device
from .aggregate import RUN_RECORD
from .calibration import calibrate
from .grid import Variant
from .plan import Plan, base_config_or_probe, run_config, run_dir_of, train_argv, write_plan


@dataclass
class RunOutcome:
    variant: str
    seed: int
    status: str  # complete | skipped | interrupted | failed: ...
    summary: dict[str, Any] | None = None


class Workers:
    """The worker processes started so far; :meth:`stop` terminates them and starts no more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[subprocess.Popen] = []
        self.stopped = False

    def start(self, command: list[str]) -> subprocess.Popen | None:
        with self._lock:
            if self.stopped:
                return None
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self._running.append(process)
            return process

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for process in self._running:
                if process.poll() is None:
                    process.terminate()  # SIGTERM: the run resumes from its checkpoint


def pending_runs(plan: Plan, out: Path, variants: Sequence[Variant], seeds: Sequence[int]):
    """(variant, seed) pairs without a summary.json, in grid order then seed order."""
    todo, done = [], []
    for variant in variants:
        for seed in seeds:
            finished = (run_dir_of(out, variant, seed) / "summary.json").is_file()
            (done if finished else todo).append((variant, seed))
    return todo, done


def run_ablation(
    plan: Plan,
    out: Path,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    *,
    jobs: int = 1,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = True,
    threads: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Train every pending (variant, seed) of ``plan`` into ``out``; finished runs are skipped.

    ``plan`` must already be merged with any plan stored in ``out``. When ``plan.budget`` is
    None it is measured first (``plan.time_budget_s``) and stored in the plan. Returns one
    outcome per requested run; failures are recorded, not raised.
    """
    torch_device = resolve_device(device)
    if threads == 0 and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    if plan.budget is not None:
        for variant in variants:  # every config error before anything trains
            for seed in seeds:
                run_config(plan, variant, seed, threads)
    write_plan(out, plan)
    todo, done = pending_runs(plan, out, variants, seeds)
    outcomes = [RunOutcome(v.name, s, "skipped") for v, s in done]
    for variant, seed in done:
        say(f"skipping {variant.name} seed {seed}: finished ({run_dir_of(out, variant, seed)})")
    if not todo:
        return outcomes
    # Once, here (downloaded if needed, the cache built): the workers only read it.
    splits = load_splits(
        base_config_or_probe(plan).data, data_dir, download=download, progress=progress
    )
    if plan.budget is None:
        say(
            f"measuring the cost of an iteration on {torch_device} for a "
            f"{plan.time_budget_s:g} s budget"
        )
        plan.budget, plan.calibration = calibrate(
            plan, list(variants), splits, torch_device, plan.time_budget_s, threads, say=say
        )
        write_plan(out, plan)
        say(
            f"budget: {plan.budget} meta-iterations ({plan.epochs} epochs x "
            f"{plan.iterations_per_epoch})"
        )
    options = ["--device", torch_device.type, "--no-download", "--quiet"]
    options += ["--data-dir", str(data_dir)] if data_dir else []
    echo = say if jobs == 1 else None
    workers = Workers()
    pool = ThreadPoolExecutor(max_workers=jobs)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        futures = [
            pool.submit(_train_one, plan, out, v, s, threads, options, workers, echo, say)
            for v, s in todo
        ]
        for future in as_completed(futures):
            outcomes.append(future.result())
    except BaseException:
        workers.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcomes


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _train_one(
    plan: Plan,
    out: Path,
    variant: Variant,
    seed: int,
    threads: int,
    options: list[str],
    workers: Workers,
    echo: Callable[[str], None] | None,
    say: Callable[[str], None],
) -> RunOutcome:
    """One worker: ``mamlpp train ... --resume`` in a subprocess; its outcome recorded."""
    run_dir = run_dir_of(out, variant, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = train_argv(plan, variant, seed, run_dir, threads)
    record = {
        "variant": variant.name,
        "seed": seed,
        "techniques": list(variant.techniques),
        "command": shlex.join(["mamlpp", *argv]),
        "status": "running",
    }
    write_json(run_dir / RUN_RECORD, record)
    log_path = run_dir / "train.log"
    with open(log_path, "a", encoding="utf-8") as log:
        process = workers.start([sys.executable, "-m", "mamlpp", *argv, *options])
        if process is None:
            return RunOutcome(variant.name, seed, "interrupted")
        say(f"started {variant.name} seed {seed} (pid {process.pid}, log {log_path})")
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if echo is not None:
                echo(line.rstrip("\n"))
        code = process.wait()
    summary = read_json(run_dir / "summary.json")
    if code == 0 and summary is not None:
        status = "complete"
        say(
            f"finished {variant.name} seed {seed}: test {100 * summary['test_accuracy']:.2f}% "
            f"+- {100 * summary['test_ci95']:.2f}% over {summary['test_tasks']} tasks, "
            f"{duration(summary['wall_time_s'])}"
        )
    else:
        why = _last_error(log_path) or f"exit code {code}"
        status = "interrupted" if workers.stopped else f"failed: {why}"
        say(f"{status.upper()} {variant.name} seed {seed} (log {log_path})")
    write_json(run_dir / RUN_RECORD, {**record, "status": status})
    return RunOutcome(variant.name, seed, status, summary)


def _last_error(log: Path) -> str | None:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("mamlpp: error: "):
            return line[len("mamlpp: error: ") :]
    return None
