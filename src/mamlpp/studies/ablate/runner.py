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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mamlpp.run.build import resolve_device
from mamlpp.run.datasource import load_splits
from mamlpp.run.run_dir import read_json, write_json
from mamlpp.studies.ablate.calibration import calibrate
from mamlpp.studies.ablate.grid import Variant
from mamlpp.studies.ablate.plan import (
    RUN_RECORD,
    Plan,
    base_config,
    is_finished,
    run_config,
    run_dir_of,
    train_argv,
    write_plan,
)
from mamlpp.util.format import duration


def threads_per_run(threads: int, jobs: int) -> int:
    """``--threads``; 0 with several jobs shares the cores out between them."""
    return max(1, (os.cpu_count() or 1) // jobs) if threads == 0 and jobs > 1 else threads


class Workers:
    """The worker processes of one session; :meth:`stop` terminates those running and starts
    no more."""

    def __init__(self, options: list[str], echo: bool) -> None:
        self.options = options  # added to every worker's command: --device, --no-download ...
        self.echo = echo  # the workers' output on the console as well (--jobs 1)
        self.stopped = False
        self._running: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def run(self, argv: list[str], log_path: Path, name: str) -> int | None:
        """``mamlpp ARGV`` with its output appended to ``log_path``: its exit code, or None
        when stopped before it started."""
        with self._lock:
            if self.stopped:
                return None
            process = subprocess.Popen(
                [sys.executable, "-m", "mamlpp", *argv, *self.options],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self._running.append(process)
        print(f"started {name} (pid {process.pid}, log {log_path})", flush=True)
        with open(log_path, "a", encoding="utf-8") as log:
            assert process.stdout is not None  # started with stdout=PIPE
            for line in process.stdout:
                log.write(line)
                log.flush()
                if self.echo:
                    print(line, end="", flush=True)
        return process.wait()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for process in self._running:
                if process.poll() is None:
                    process.terminate()  # SIGTERM: the run resumes from its checkpoint


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
) -> list[str]:
    """Train every unfinished (variant, seed) of ``plan`` into ``out``; returns the runs that
    failed ("maml seed 0"): failures are recorded, not raised.

    ``plan`` must already be merged with any plan stored in ``out``. When ``plan.budget`` is
    None it is measured first (``plan.time_budget_s``) and stored in the plan.
    """
    torch_device = resolve_device(device)
    threads = threads_per_run(threads, jobs)
    todo = []
    for variant in variants:
        for seed in seeds:
            run_config(plan.probe(), variant, seed, threads)  # every error before any training
            if is_finished(out, variant, seed):
                where = run_dir_of(out, variant, seed).root
                print(f"skipping {variant.name} seed {seed}: finished ({where})", flush=True)
            else:
                todo.append((variant, seed))
    write_plan(out, plan)
    if not todo:
        return []
    # Once, here (downloaded if needed, the cache built): the workers only read it.
    splits = load_splits(base_config(plan).data, data_dir, download=download, progress=progress)
    if plan.budget is None:
        print(
            f"measuring the cost of an iteration on {torch_device} for a "
            f"{plan.time_budget_s:g} s budget",
            flush=True,
        )
        plan.budget, plan.calibration = calibrate(plan, variants, splits, torch_device, threads)
        write_plan(out, plan)
        print(
            f"budget: {plan.budget} meta-iterations ({plan.epochs} epochs x "
            f"{plan.iterations_per_epoch})",
            flush=True,
        )
    options = ["--device", torch_device.type, "--no-download", "--quiet"]
    options += ["--data-dir", str(data_dir)] if data_dir else []
    workers = Workers(options, echo=jobs == 1)
    pool = ThreadPoolExecutor(max_workers=jobs)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        futures = [pool.submit(train_one, plan, out, v, s, threads, workers) for v, s in todo]
        statuses = [future.result() for future in futures]
    except BaseException:
        workers.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    failed = zip(todo, statuses, strict=True)
    return [f"{v.name} seed {s}" for (v, s), status in failed if status.startswith("failed")]


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def train_one(
    plan: Plan, out: Path, variant: Variant, seed: int, threads: int, workers: Workers
) -> str:
    """One run in a worker, its command and outcome recorded in its ``ablate.json``; returns
    the outcome: complete, interrupted or "failed: why"."""
    run = run_dir_of(out, variant, seed)
    run.root.mkdir(parents=True, exist_ok=True)
    argv = train_argv(plan, variant, seed, out, threads)
    record = {
        "variant": variant.name,
        "seed": seed,
        "techniques": list(variant.techniques),
        "command": shlex.join(["mamlpp", *argv]),
        "status": "running",
    }
    write_json(run.root / RUN_RECORD, record)
    name, log_path = f"{variant.name} seed {seed}", run.root / "train.log"
    code = workers.run(argv, log_path, name)
    summary = read_json(run.summary)
    if code == 0 and summary is not None:
        status = "complete"
        print(
            f"finished {name}: test {100 * summary['test_accuracy']:.2f}% "
            f"+- {100 * summary['test_ci95']:.2f}% over {summary['test_tasks']} tasks, "
            f"{duration(summary['wall_time_s'])}",
            flush=True,
        )
    else:
        status = "interrupted" if workers.stopped else f"failed: {_last_error(log_path, code)}"
        print(f"{status.upper()} {name} (log {log_path})", flush=True)
    write_json(run.root / RUN_RECORD, {**record, "status": status})
    return status


def _last_error(log: Path, code: int | None) -> str:
    """The worker's one-line error (the last ``mamlpp: error:`` line of its log), else its
    exit code."""
    prefix = "mamlpp: error: "
    with open(log, encoding="utf-8", errors="replace") as handle:
        errors = [line[len(prefix) :].rstrip() for line in handle if line.startswith(prefix)]
    return errors[-1] if errors else f"exit code {code}"
