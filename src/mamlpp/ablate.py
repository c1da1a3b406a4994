"""``mamlpp ablate``: the paper's ablation grid, run with the trainer and aggregated over seeds.

The grid is data (:data:`GRID`): each variant names the MAML++ techniques it switches on over
plain MAML (spec section 1). Every (variant, seed) run trains in ``OUT/<variant>/seed<k>/``
through :func:`mamlpp.train.run_training`, in this process (``--jobs 1``) or in worker processes
(``--jobs N``), and is an ordinary run folder that ``mamlpp train --resume`` and
``mamlpp report`` understand. The ablation is resumable: a run with ``summary.json`` is skipped,
an interrupted one continues from its checkpoint (the trainer's exact resume).

Equal budgets keep the paper's schedule shapes: ``--budget ITERS`` keeps the preset's number of
epochs and shortens the epoch (``iterations_per_epoch = ITERS / epochs``), so multi-step-loss
annealing, derivative-order annealing and cosine annealing act at the same fractions of
training as in the paper. ``--time-budget SECONDS`` instead measures the cost of an iteration
and of a validation on this machine and picks the largest such budget that trains within the
time (used by ``benchmarks/gpu_repro.sh``).

All runs are tested on the same fixed tasks: task ``j`` of the test split is a pure function of
(split, j, ``eval.test_seed``) and every variant keeps the preset's test seed. Each run records
a fingerprint of its trainer's test episodes in ``ablate.json``, and the aggregation checks that
the fingerprints agree.

Files::

    OUT/ablation.json          the settings, the variants and seeds asked for, the sessions
    OUT/<variant>/seed<k>/     a run folder (config.toml, metrics.jsonl, checkpoints/,
                               summary.json) plus ablate.json (command, status, test
                               fingerprint) and train.log (worker processes only)
    OUT/results.md, results.json   the aggregated table (mean and std over seeds, 95% CI over
                               tasks, wall time, it/s)
    OUT/test-accuracy.png, OUT/val-accuracy.png, OUT/report/   plots
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, MamlppError

TECHNIQUES = ("MSL", "DA", "BNRS", "BNWB", "LSLR", "CA")
# The [meta] keys that switch each technique; "on" values come from the MAML++ preset, "off"
# values from presets.MAML_META (MetaConfig.maml()).
TECHNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "MSL": ("msl",),
    "DA": ("first_order_epochs",),
    "BNRS": ("per_step_bn_stats",),
    "BNWB": ("per_step_bn_affine",),
    "LSLR": ("learn_inner_lrs",),
    "CA": ("cosine_lr",),
}
DATASETS = ("omniglot", "omniglot-vinyals", "mini-imagenet", "synthetic")
PLAN_FILE = "ablation.json"
RUN_RECORD = "ablate.json"
PLAN_FORMAT = 1


@dataclass(frozen=True, eq=False)
class Variant:
    """One row of the ablation: the techniques switched on over MAML, plus fixed meta values."""

    name: str
    techniques: tuple[str, ...]
    label: str  # the table's "techniques" column
    fixed: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def folder(self) -> str:
        """The run folder's name: the variant's name made file- and report-safe ("maml++" ->
        "mamlpp", "/" -> "_"; `mamlpp report` turns "+" runs into "-", so "maml++/seed0" and
        "maml/seed0" would share plot file names)."""
        return self.name.replace("++", "pp").replace("/", "_")


GRID: tuple[Variant, ...] = (
    Variant("maml", (), "none (MAML)"),
    Variant("maml+msl", ("MSL",), "MSL"),
    Variant("maml+da", ("DA",), "DA"),
    # Under transductive BN (the reference's behaviour) running statistics never reach an
    # output, so BNRS alone would be MAML again; alone it is measured as the paper describes it:
    # per-step statistics collected in training and used at evaluation.
    Variant(
        "maml+bnrs",
        ("BNRS",),
        "BNRS (per-step BN at evaluation)",
        {"bn_mode": "per_step"},
        note="bn_mode=per_step: with transductive BN the statistics never affect an output",
    ),
    Variant("maml+bnwb", ("BNWB",), "BNWB"),
    Variant("maml+lslr", ("LSLR",), "LSLR"),
    Variant("maml+ca", ("CA",), "CA"),
    Variant("maml++", TECHNIQUES, "all six, transductive BN", {"bn_mode": "transductive"}),
    Variant(
        "maml++/per_step-bn",
        TECHNIQUES,
        "all six, per-step BN at evaluation",
        {"bn_mode": "per_step"},
    ),
    Variant("fomaml", (), "none, first order", {"second_order": False}),
)
VARIANTS: dict[str, Variant] = {v.name: v for v in GRID}


# ------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """What an ablation folder trains: stored as ``OUT/ablation.json``."""

    dataset: str
    ways: int
    shots: int
    base_preset: str
    epochs: int
    budget: int | None  # meta-iterations per run; None until a time budget is measured
    tasks_per_batch: int
    val_tasks: int | None  # None: the preset's
    test_tasks: int
    top_k: int | None  # None: the preset's
    sets: list[str]  # extra --set overrides, applied to every run
    variants: list[str]
    seeds: list[int]
    time_budget_s: float | None = None
    calibration: dict[str, Any] | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)

    # Settings that change what a run trains or how it is tested: a folder keeps them.
    FIXED = ("dataset", "ways", "shots", "tasks_per_batch", "val_tasks", "test_tasks", "top_k")

    @property
    def iterations_per_epoch(self) -> int | None:
        return None if self.budget is None else self.budget // self.epochs

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "iterations_per_epoch": self.iterations_per_epoch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def variant_list(self) -> list[Variant]:
        return [VARIANTS[name] for name in self.variants if name in VARIANTS]

    def command(self, out: Path) -> str:
        """The canonical ``mamlpp ablate`` command of this plan (all settings explicit)."""
        args = ["mamlpp", "ablate", "--dataset", self.dataset, "--ways", str(self.ways)]
        args += ["--shots", str(self.shots)]
        if self.time_budget_s is not None:
            args += ["--time-budget", f"{self.time_budget_s:g}"]
        elif self.budget is not None:
            args += ["--budget", str(self.budget)]
        args += ["--seeds", ",".join(map(str, self.seeds))]
        args += ["--variants", ",".join(self.variants)]
        args += ["--tasks-per-batch", str(self.tasks_per_batch)]
        if self.val_tasks is not None:
            args += ["--val-tasks", str(self.val_tasks)]
        args += ["--test-tasks", str(self.test_tasks)]
        if self.top_k is not None:
            args += ["--top-k", str(self.top_k)]
        for assignment in self.sets:
            args += ["--set", assignment]
        return shlex.join([*args, "--out", str(out)])


def base_preset(dataset: str, ways: int, shots: int) -> str:
    """The MAML++ preset an ablation of ``dataset`` starts from (ways/shots are set anyway)."""
    from .presets import PRESETS

    if dataset == "synthetic":
        return "synthetic"
    family = "mini-imagenet" if dataset == "mini-imagenet" else "omniglot"
    exact = f"{family}-{ways}w{shots}s"
    return exact if exact in PRESETS else f"{family}-5w1s"


def _set_value(value: Any) -> str:
    """A ``--set`` value: a bare word where the parser takes it as text (readable commands),
    else the TOML literal."""
    from .experiment import toml_value

    bare = isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", value)
    return value if bare and value not in ("true", "false", "inf", "nan") else toml_value(value)


def common_sets(plan: Plan, iterations_per_epoch: int | None) -> list[str]:
    """``--set`` overrides shared by every run of the plan (before the variant's)."""
    sets = [f"data.dataset={plan.dataset}", f"data.ways={plan.ways}", f"data.shots={plan.shots}"]
    if iterations_per_epoch is not None:
        sets.append(f"train.iterations_per_epoch={iterations_per_epoch}")
    sets.append(f"train.tasks_per_batch={plan.tasks_per_batch}")
    if plan.val_tasks is not None:
        sets.append(f"eval.val_tasks={plan.val_tasks}")
    sets.append(f"eval.test_tasks={plan.test_tasks}")
    if plan.top_k is not None:
        sets.append(f"eval.top_k={plan.top_k}")
    return sets + list(plan.sets)


def variant_meta(variant: Variant, on_values: dict[str, Any]) -> dict[str, Any]:
    """The [meta] values of ``variant``: MAML's off values, the variant's techniques switched
    on with the MAML++ preset's values, transductive BN and second order unless fixed."""
    from .presets import MAML_META

    meta: dict[str, Any] = dict(MAML_META)
    for tag in variant.techniques:
        for key in TECHNIQUE_KEYS[tag]:
            meta[key] = on_values[key]
    meta.update({"bn_mode": "transductive", "second_order": True})
    meta.update(variant.fixed)
    return meta


def run_sets(plan: Plan, variant: Variant, seed: int, threads: int = 0) -> list[str]:
    """Every ``--set`` of one run, as ``mamlpp train`` would take them."""
    base = base_config(plan)
    on_values = {key: getattr(base.meta, key) for keys in TECHNIQUE_KEYS.values() for key in keys}
    sets = common_sets(plan, plan.iterations_per_epoch)
    sets += [f"meta.{k}={_set_value(v)}" for k, v in variant_meta(variant, on_values).items()]
    sets.append(f"train.seed={seed}")
    if threads:
        sets.append(f"train.threads={threads}")
    return sets


def base_config(plan: Plan):
    """The MAML++ base configuration (preset + common settings) before any variant."""
    from .presets import resolve_config

    return resolve_config(plan.base_preset, None, common_sets(plan, plan.iterations_per_epoch))


def run_config(plan: Plan, variant: Variant, seed: int, threads: int = 0):
    """The resolved ExperimentConfig of one run; its techniques must be the variant's."""
    from .presets import resolve_config

    config = resolve_config(plan.base_preset, None, run_sets(plan, variant, seed, threads))
    if tuple(config.techniques) != tuple(variant.techniques):
        have = " ".join(config.techniques) or "none"
        want = " ".join(variant.techniques) or "none"
        raise ConfigError(
            f"variant {variant.name} should switch on {want} but its config has {have} "
            f"(an --set override turns a technique off?)"
        )
    return config


def train_command(plan: Plan, variant: Variant, seed: int, run_dir: Path, threads: int = 0) -> str:
    """The equivalent ``mamlpp train`` command of one run."""
    args = ["mamlpp", "train", "--preset", plan.base_preset]
    for assignment in run_sets(plan, variant, seed, threads):
        args += ["--set", assignment]
    return shlex.join([*args, "--out", str(run_dir), "--resume"])


def run_dir_of(out: Path, variant: Variant, seed: int) -> Path:
    return out / variant.folder / f"seed{seed}"


# ------------------------------------------------------------------------------ plan file


def read_plan(out: Path) -> Plan | None:
    path = out / PLAN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Plan.from_dict(data)
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as error:
        raise MamlppError(f"{path} is unreadable ({error}); move it away to start over") from None


def write_plan(out: Path, plan: Plan) -> None:
    from .runs import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, plan.to_dict())


def merge_plan(old: Plan | None, new: Plan, out: Path) -> Plan:
    """Continue ``old`` with the variants and seeds of ``new``; other settings must agree."""
    if old is None:
        return new
    for key in (*Plan.FIXED, "sets"):
        if getattr(old, key) != getattr(new, key):
            raise ConfigError(
                f"{out} holds an ablation with {key}={getattr(old, key)!r}, not "
                f"{getattr(new, key)!r}; use the same settings to continue it or another --out"
            )
    if new.budget is not None and old.budget is not None and new.budget != old.budget:
        raise ConfigError(
            f"{out} holds an ablation with --budget {old.budget}, not {new.budget}; use the same "
            "budget to continue it or another --out"
        )
    merged = Plan.from_dict(old.to_dict())
    merged.variants = [v.name for v in GRID if v.name in set(old.variants) | set(new.variants)]
    merged.seeds = sorted(set(old.seeds) | set(new.seeds))
    return merged


# ------------------------------------------------------------------------------ test tasks


def test_fingerprint(sampler, tasks: int) -> str:
    """A hash of the classes, images and rotations of test tasks ``0..tasks-1``."""
    import torch

    episodes = sampler.sample_indices(torch.arange(tasks))
    digest = hashlib.sha256()
    split = sampler.split
    digest.update(f"{split.name}:{split.num_classes}:{split.num_images}:{tasks}".encode())
    for tensor in (episodes.classes, episodes.images, episodes.rotations):
        digest.update(tensor.to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ running


@dataclass
class RunOutcome:
    variant: str
    seed: int
    status: str  # complete | skipped | failed: ...
    summary: dict[str, Any] | None = None


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    from .runs import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_RECORD, record)


def _read_record(run_dir: Path) -> dict[str, Any]:
    from .runs import read_json

    return read_json(run_dir / RUN_RECORD) or {}


def run_one(
    plan: Plan,
    out: Path,
    variant: Variant,
    seed: int,
    splits,
    device,
    *,
    threads: int = 0,
    progress: bool = False,
    stream=None,
    on_start: Callable[[Variant, int, Any], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue) one run in this process and test it; returns its summary."""
    from .runs import RunDir
    from .train import run_training

    config = run_config(plan, variant, seed, threads)
    run_dir = run_dir_of(out, variant, seed)
    record = {
        "variant": variant.name,
        "seed": seed,
        "techniques": list(variant.techniques),
        "command": train_command(plan, variant, seed, run_dir, threads),
        "status": "running",
        **{k: v for k, v in _read_record(run_dir).items() if k == "test_fingerprint"},
    }
    _write_record(run_dir, record)

    def started(trainer) -> None:
        record["test_fingerprint"] = test_fingerprint(
            trainer.samplers["test"], config.eval.test_tasks
        )
        record["test_seed"] = config.eval.test_seed
        record["test_tasks"] = config.eval.test_tasks
        _write_record(run_dir, record)
        if on_start is not None:
            on_start(variant, seed, trainer)

    try:
        summary = run_training(
            config,
            RunDir(run_dir),
            splits,
            device,
            resume=True,
            progress=progress,
            out=stream,
            on_start=started,
        )
    except MamlppError as error:
        record["status"] = f"failed: {error}"
        _write_record(run_dir, record)
        raise
    record["status"] = "complete"
    _write_record(run_dir, record)
    return summary


def pending_runs(plan: Plan, out: Path, variants: Sequence[Variant], seeds: Sequence[int]):
    """(variant, seed) pairs without a summary.json, in grid order then seed order."""
    todo, done = [], []
    for variant in variants:
        for seed in seeds:
            finished = (run_dir_of(out, variant, seed) / "summary.json").is_file()
            (done if finished else todo).append((variant, seed))
    return todo, done


def calibrate(
    plan: Plan,
    variants: Sequence[Variant],
    splits,
    device,
    seconds: float,
    threads: int = 0,
    *,
    repeats: int = 3,
    safety: float = 0.9,
    say: Callable[[str], None] = print,
) -> tuple[int, dict[str, Any]]:
    """The largest budget (a multiple of the epochs) whose training and validation fit in
    ``seconds`` for every variant, from measured costs on this device.

    Per variant and per schedule regime (MSL on/off x first/second order, as the epochs will
    see them): ``repeats`` timed meta-iterations after one warm-up; plus one timed validation.
    Returns the budget and the measurements.
    """
    import torch

    from .data import EpisodeSampler
    from .evaluate import evaluate
    from .schedules import msl_active, second_order_at
    from .train import build_learner

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    old_threads = torch.get_num_threads()
    measured: dict[str, Any] = {}
    budgets = []
    probe = Plan.from_dict({**plan.to_dict(), "budget": plan.epochs})  # 1 iteration per epoch
    try:
        for variant in variants:
            config = run_config(probe, variant, 0, threads)
            if config.train.threads:  # as run_training will run it
                torch.set_num_threads(config.train.threads)
            d, e = config.data, config.eval
            learner = build_learner(config, splits["train"].image_shape[0], device)
            optimizer = learner.make_optimizer()
            train = EpisodeSampler(splits["train"], d.ways, d.shots, d.targets, 0, device)
            val = EpisodeSampler(splits["val"], d.ways, d.shots, d.targets, e.val_seed, device)
            regimes: dict[tuple[bool, bool], list[int]] = {}
            for epoch in range(config.train.epochs):
                key = (msl_active(epoch, config.meta), second_order_at(epoch, config.meta))
                regimes.setdefault(key, []).append(epoch)
            per_iteration_sum, costs, task = 0.0, {}, 0
            for (msl, second), epochs in regimes.items():
                times = []
                for i in range(repeats + 1):
                    batch = config.train.tasks_per_batch
                    tasks = train.sample(torch.arange(task, task + batch))
                    task += batch
                    sync()
                    start = time.perf_counter()
                    loss, _ = learner.meta_loss(*tasks, epoch=epochs[0])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    sync()
                    if i:  # the first is a warm-up
                        times.append(time.perf_counter() - start)
                cost = statistics.median(times)
                costs[f"msl={msl},second_order={second}"] = {
                    "s_per_it": cost,
                    "epochs": len(epochs),
                }
                per_iteration_sum += cost * len(epochs)
            evaluate(learner, val, min(e.batch_size, e.val_tasks), e.batch_size)  # warm-up
            sync()
            start = time.perf_counter()
            evaluate(learner, val, e.val_tasks, e.batch_size)
            sync()
            val_s = time.perf_counter() - start
            available = seconds * safety - val_s * config.train.epochs
            per_epoch = int(available // per_iteration_sum) if available > 0 else 0
            measured[variant.name] = {
                "regimes": costs,
                "val_s": val_s,
                "iterations_per_epoch": per_epoch,
            }
            say(
                f"calibration {variant.name}: "
                + ", ".join(f"{k} {v['s_per_it'] * 1000:.1f} ms/it" for k, v in costs.items())
                + f", validation {val_s:.2f} s -> {per_epoch} iterations per epoch"
            )
            if per_epoch < 1:
                need = per_iteration_sum + val_s * config.train.epochs
                raise ConfigError(
                    f"--time-budget {seconds:g} s is too short for {variant.name} on {device}: "
                    f"one iteration per epoch and the validations need about {need / safety:.0f} s"
                )
            budgets.append(per_epoch * config.train.epochs)
    finally:
        torch.set_num_threads(old_threads)
    budget = min(budgets)
    return budget, {
        "time_budget_s": seconds,
        "safety": safety,
        "device": str(device),
        "variants": measured,
        "budget": budget,
    }


def _worker_command(out: Path, variant: Variant, seed: int, args: dict[str, Any]) -> list[str]:
    command = [sys.executable, "-m", "mamlpp.ablate", "--worker", str(out), variant.name]
    command += [str(seed), "--device", args["device"], "--threads", str(args["threads"])]
    if args.get("data_dir"):
        command += ["--data-dir", str(args["data_dir"])]
    return command


def _run_parallel(
    plan: Plan,
    out: Path,
    todo: list[tuple[Variant, int]],
    jobs: int,
    worker_args: dict[str, Any],
    say: Callable[[str], None],
    poll_s: float = 0.5,
) -> list[RunOutcome]:
    """Run ``todo`` in up to ``jobs`` worker processes; each logs to its run's train.log."""
    from .runs import read_json

    queue = list(todo)
    active: dict[subprocess.Popen, tuple[Variant, int, Any, float]] = {}
    outcomes: list[RunOutcome] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop_all(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        while queue or active:
            while queue and len(active) < jobs:
                variant, seed = queue.pop(0)
                run_dir = run_dir_of(out, variant, seed)
                run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run_dir / "train.log", "a", encoding="utf-8")
                command = _worker_command(out, variant, seed, worker_args)
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
                active[process] = (variant, seed, log, time.perf_counter())
                say(f"started {variant.name} seed {seed} (pid {process.pid}, log {log.name})")
            time.sleep(poll_s)
            for process in [p for p in active if p.poll() is not None]:
                variant, seed, log, start = active.pop(process)
                log.close()
                run_dir = run_dir_of(out, variant, seed)
                summary = read_json(run_dir / "summary.json")
                if process.returncode == 0 and summary is not None:
                    outcomes.append(RunOutcome(variant.name, seed, "complete", summary))
                    say(_finished_line(variant, seed, summary))
                else:
                    why = _last_error(run_dir / "train.log") or f"exit code {process.returncode}"
                    outcomes.append(RunOutcome(variant.name, seed, f"failed: {why}"))
                    say(f"FAILED {variant.name} seed {seed}: {why} (log {run_dir / 'train.log'})")
    except KeyboardInterrupt:
        for process in active:
            process.terminate()  # the workers we started; they resume on the next call
        for process, (_, _, log, _) in active.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcomes


def _last_error(log: Path) -> str | None:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("mamlpp: error: "):
            return line[len("mamlpp: error: ") :]
    return None


def _finished_line(variant: Variant, seed: int, summary: dict[str, Any]) -> str:
    return (
        f"finished {variant.name} seed {seed}: test {100 * summary['test_accuracy']:.2f}% "
        f"+- {100 * summary['test_ci95']:.2f}% over {summary['test_tasks']} tasks, "
        f"{duration(summary['wall_time_s'])}"
    )


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
    on_start: Callable[[Variant, int, Any], None] | None = None,
) -> list[RunOutcome]:
    """Train every pending (variant, seed) of ``plan`` into ``out``; finished runs are skipped.

    ``plan`` must already be merged with any plan stored in ``out``. When ``plan.budget`` is
    None the budget is measured first (``plan.time_budget_s``) and stored in the plan.
    Returns one outcome per requested run; failures are recorded, not raised.
    """
    from .datasource import load_splits
    from .train import resolve_device

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
    splits = load_splits(
        base_config_or_probe(plan).data, data_dir, download=download, progress=progress
    )
    if plan.budget is None:
        assert plan.time_budget_s is not None
        say(
            f"measuring the cost of an iteration on {torch_device} for a "
            f"{plan.time_budget_s:g} s budget"
        )
        plan.budget, plan.calibration = calibrate(
            plan, variants, splits, torch_device, plan.time_budget_s, threads, say=say
        )
        write_plan(out, plan)
        say(
            f"budget: {plan.budget} meta-iterations ({plan.epochs} epochs x "
            f"{plan.iterations_per_epoch})"
        )
    if jobs > 1:
        worker_args = {"device": torch_device.type, "threads": threads, "data_dir": data_dir}
        return outcomes + _run_parallel(plan, out, todo, jobs, worker_args, say)
    for index, (variant, seed) in enumerate(todo, 1):
        run_dir = run_dir_of(out, variant, seed)
        say(f"[{index}/{len(todo)}] {variant.name} seed {seed} -> {run_dir}")
        try:
            summary = run_one(
                plan,
                out,
                variant,
                seed,
                splits,
                torch_device,
                threads=threads,
                progress=progress,
                on_start=on_start,
            )
        except MamlppError as error:
            outcomes.append(RunOutcome(variant.name, seed, f"failed: {error}"))
            say(f"FAILED {variant.name} seed {seed}: {error}")
            continue
        outcomes.append(RunOutcome(variant.name, seed, "complete", summary))
        say(_finished_line(variant, seed, summary))
    return outcomes


def base_config_or_probe(plan: Plan):
    """The base config; with the budget still unknown, a probe with one iteration per epoch."""
    if plan.budget is None:
        return base_config(Plan.from_dict({**plan.to_dict(), "budget": plan.epochs}))
    return base_config(plan)


# ------------------------------------------------------------------------------ aggregation


def duration(seconds: float | None) -> str:
    """``42 s``, ``12.3 min`` or ``1.52 h``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def collect(out: Path, plan: Plan) -> dict[str, Any]:
    """results.json's content from the run folders in ``out``."""
    from .runs import read_json, read_metrics

    rows, fingerprints = [], {}
    for variant in plan.variant_list():
        runs = []
        for seed in plan.seeds:
            run_dir = run_dir_of(out, variant, seed)
            summary = read_json(run_dir / "summary.json")
            record = _read_record(run_dir)
            if summary is not None:
                status = "complete"
            elif str(record.get("status", "")).startswith("failed"):
                status = record["status"]
            elif (run_dir / "metrics.jsonl").is_file():
                val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "val"]
                status = f"epoch {len(val)}/{plan.epochs}"
            else:
                status = "not started"
            entry: dict[str, Any] = {
                "seed": seed,
                "status": status,
                "run_dir": str(run_dir.relative_to(out)),
                "command": record.get("command"),
                "test_fingerprint": record.get("test_fingerprint"),
            }
            if record.get("test_fingerprint") and summary is not None:
                fingerprints[f"{variant.name}/seed{seed}"] = record["test_fingerprint"]
            if summary is not None:
                for key in (
                    "test_accuracy",
                    "test_ci95",
                    "test_tasks",
                    "ensemble_size",
                    "ensemble_epochs",
                    "best_val_accuracy",
                    "best_val_epoch",
                    "wall_time_s",
                    "train_time_s",
                    "iterations_per_second",
                    "iterations",
                    "device",
                ):
                    entry[key] = summary.get(key)
            runs.append(entry)
        complete = [r for r in runs if r["status"] == "complete"]
        accuracies = [r["test_accuracy"] for r in complete]
        rows.append(
            {
                "name": variant.name,
                "folder": variant.folder,
                "techniques": list(variant.techniques),
                "label": variant.label,
                "note": variant.note,
                "seeds_requested": len(plan.seeds),
                "seeds_complete": [r["seed"] for r in complete],
                "mean_test_accuracy": _mean(accuracies),
                "std_test_accuracy": _std(accuracies),
                "mean_test_ci95": _mean([r["test_ci95"] for r in complete]),
                "mean_wall_time_s": _mean([r["wall_time_s"] for r in complete]),
                "total_wall_time_s": sum(r["wall_time_s"] for r in complete),
                "mean_iterations_per_second": _mean([r["iterations_per_second"] for r in complete]),
                "runs": runs,
            }
        )
    maml = next((r for r in rows if r["name"] == "maml"), None)
    for row in rows:
        both = maml is not None and None not in (
            maml["mean_test_accuracy"],
            row["mean_test_accuracy"],
        )
        delta = row["mean_test_accuracy"] - maml["mean_test_accuracy"] if both else None
        # equal accuracies (float32 per-task scores) must not read as "-0.00 pp, below MAML"
        row["delta_vs_maml"] = None if delta is None else (0.0 if abs(delta) < 1e-6 else delta)
    unique = sorted(set(fingerprints.values()))
    config = base_config_or_probe(plan)
    return {
        "format": PLAN_FORMAT,
        "command": plan.command(out),
        "settings": {
            **{k: v for k, v in plan.to_dict().items() if k not in ("sessions", "format")},
            "epochs": plan.epochs,
            "val_tasks": config.eval.val_tasks,
            "top_k": config.eval.top_k,
            "val_seed": config.eval.val_seed,
            "test_seed": config.eval.test_seed,
            "channels": config.model.channels,
            "num_inner_steps": config.meta.num_inner_steps,
        },
        "test_tasks": {
            "count": plan.test_tasks,
            "seed": config.eval.test_seed,
            "fingerprints": unique,
            "identical": len(unique) <= 1,
            "runs_checked": len(fingerprints),
        },
        "elapsed_s": sum(float(s.get("elapsed_s", 0.0)) for s in plan.sessions),
        "sessions": plan.sessions,
        "environment": environment(),
        "variants": rows,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and hardware of this machine, recorded with the results."""
    import numpy
    import torch

    from . import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "mamlpp": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    s, tests = results["settings"], results["test_tasks"]
    env = results["environment"]
    budget = s["budget"]
    per_epoch = s["iterations_per_epoch"]
    lines = [
        f"# Ablation: {s['dataset']} {s['ways']}-way {s['shots']}-shot, "
        f"{budget if budget is not None else '?'} meta-iterations per run",
        "",
        "Generated by `mamlpp ablate` from the run folders beside this file; do not edit by "
        "hand (`mamlpp ablate --aggregate-only DIR` regenerates it).",
        "",
        f"* Command: `{results['command']}`",
        f"* Base: the `{s['base_preset']}` preset ({s['channels']} filters, "
        f"{s['num_inner_steps']} inner steps); every variant switches techniques on or off "
        "over it, nothing else differs.",
        f"* Budget: {s['epochs']} epochs x {per_epoch} iterations x {s['tasks_per_batch']} "
        f"tasks = {budget} meta-iterations per run. The epoch is shortened, not the number of "
        "epochs, so MSL, DA and cosine annealing act at the paper's fractions of training.",
        f"* Validation: {s['val_tasks']} fixed tasks (seed {s['val_seed']}) after every epoch; "
        f"test: the ensemble of the top-{s['top_k']} validation checkpoints on "
        f"{tests['count']} fixed test tasks (seed {tests['seed']}).",
    ]
    if tests["runs_checked"]:
        if tests["identical"]:
            lines.append(
                f"* Same test tasks in all {tests['runs_checked']} finished runs (fingerprint "
                f"`{tests['fingerprints'][0]}` of the trainers' test episodes)."
            )
        else:
            lines.append(
                f"* **WARNING: the runs were tested on different tasks** (fingerprints "
                f"{', '.join(tests['fingerprints'])}); the comparison is not valid."
            )
    if s.get("sets"):
        lines.append("* Extra settings: " + ", ".join(f"`{x}`" for x in s["sets"]))
    if s.get("calibration"):
        cal = s["calibration"]
        lines.append(
            f"* Budget measured for a {cal['time_budget_s']:g} s training time on "
            f"{cal['device']} (safety factor {cal['safety']})."
        )
    lines.append(
        f"* Environment: mamlpp {env.get('mamlpp')}, torch {env.get('torch')}, numpy "
        f"{env.get('numpy')}, Python {env.get('python')}; {env.get('cpu')} "
        f"({env.get('cpu_count')} logical CPUs)"
        + (f"; GPU {env['gpu']}" if env.get("gpu") else "")
        + f"; git {env.get('git_commit') or 'unknown'}."
    )
    elapsed = results["elapsed_s"]
    total = sum(r["total_wall_time_s"] for r in results["variants"])
    lines.append(
        f"* Wall time: {duration(total)} summed over runs; {duration(elapsed)} elapsed "
        f"over {len(results['sessions'])} session(s) of `mamlpp ablate`."
    )
    header = [
        "variant",
        "techniques",
        "seeds",
        "test % (mean ± std over seeds)",
        "Δ vs MAML (pp)",
        "per seed",
        "95% CI over tasks (mean)",
        "wall time / run",
        "it/s",
    ]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in results["variants"]:
        mean, std = row["mean_test_accuracy"], row["std_test_accuracy"]
        acc = _pct(mean) + (f" ± {_pct(std)}" if std is not None else "")
        delta = row["delta_vs_maml"]
        delta_text = "-" if delta is None else f"{100 * delta:+.2f}"
        if row["name"] == "maml":
            delta_text = "(reference)"
        per_seed = ", ".join(
            _pct(r["test_accuracy"]) if r["status"] == "complete" else f"({r['status']})"
            for r in row["runs"]
        )
        wall = row["mean_wall_time_s"]
        its = row["mean_iterations_per_second"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{row['name']}`",
                    row["label"],
                    f"{len(row['seeds_complete'])}/{row['seeds_requested']}",
                    acc,
                    delta_text,
                    per_seed,
                    f"± {_pct(row['mean_test_ci95'])}" if row["mean_test_ci95"] else "-",
                    duration(wall),
                    "-" if its is None else f"{its:.2f}",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Test accuracy in %: mean over seeds of each run's test accuracy; ± is the sample "
        "standard deviation over seeds (n - 1). The 95% CI column is the mean over seeds of "
        "each run's 1.96 standard errors over test tasks. Wall time is a run's training, "
        "validation, checkpoints and test; it/s counts training iterations only.",
    ]
    lines += ["", *_findings(results)]
    notes = [f"`{r['name']}`: {r['note']}" for r in results["variants"] if r["note"]]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    if plots:
        lines += [""]
        for title, path in plots.items():
            if path.endswith(".md"):
                lines.append(
                    f"Per-run curves, learned inner learning rates, MSL weights and BN "
                    f"gammas (first seed of each variant): [{path}]({path})"
                )
            else:
                lines += [f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _findings(results: dict[str, Any]) -> list[str]:
    """Generated sentences: MAML++ against MAML, and the variants below MAML."""
    rows = {r["name"]: r for r in results["variants"]}
    out = []
    maml, plus = rows.get("maml"), rows.get("maml++")
    if maml and plus and None not in (maml["mean_test_accuracy"], plus["mean_test_accuracy"]):
        delta = plus["delta_vs_maml"]
        verdict = "beats" if delta > 0 else "does not beat"
        out.append(
            f"**MAML++ {verdict} MAML at equal budget:** {_pct(plus['mean_test_accuracy'])}% "
            f"vs {_pct(maml['mean_test_accuracy'])}% ({100 * delta:+.2f} pp, "
            f"{len(plus['seeds_complete'])} and {len(maml['seeds_complete'])} seeds)."
        )
    worse = [
        f"`{r['name']}` ({100 * r['delta_vs_maml']:+.2f} pp)"
        for r in results["variants"]
        if r["name"] != "maml" and r["delta_vs_maml"] is not None and r["delta_vs_maml"] < 0
    ]
    if maml and maml["mean_test_accuracy"] is not None:
        out.append("**Below MAML:** " + (", ".join(worse) if worse else "none") + ".")
    return out


def aggregate(out: Path, make_plots: bool = True) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and the plots of the ablation in ``out``."""
    from .runs import write_json

    plan = read_plan(out)
    if plan is None:
        raise ConfigError(f"{out} is not an ablation folder (no {PLAN_FILE})")
    results = collect(out, plan)
    plots: dict[str, str] = {}
    if make_plots:
        plots = _plots(out, plan, results)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(_markdown(results, plots), encoding="utf-8")
    return results


def _plots(out: Path, plan: Plan, results: dict[str, Any]) -> dict[str, str]:
    from .plots import Series, heatmap, line_chart
    from .report import make_report
    from .runs import read_metrics

    plots: dict[str, str] = {}
    rows = results["variants"]
    maml = next((r for r in rows if r["name"] == "maml"), None)
    matrix, labels = [], []
    for row in rows:
        by_seed = {r["seed"]: r for r in row["runs"]}
        values = [
            100 * by_seed[s]["test_accuracy"] if by_seed[s]["status"] == "complete" else math.nan
            for s in plan.seeds
        ]
        mean = row["mean_test_accuracy"]
        matrix.append([*values, math.nan if mean is None else 100 * mean])
        labels.append(row["name"])
    if matrix:
        center = None
        if maml is not None and maml["mean_test_accuracy"] is not None:
            center = 100 * maml["mean_test_accuracy"]
        heatmap(
            out / "test-accuracy.png",
            matrix,
            labels,
            [f"seed {s}" for s in plan.seeds] + ["mean"],
            "test accuracy % per variant and seed",
            "test accuracy % (centred on MAML's mean)" if center is not None else "test accuracy %",
            center=center,
        )
        plots["test accuracy per variant and seed"] = "test-accuracy.png"
    series = []
    for row in rows:
        curves: dict[int, list[float]] = {}
        for run in row["runs"]:
            for record in read_metrics(out / run["run_dir"] / "metrics.jsonl"):
                if record.get("kind") == "val":
                    curves.setdefault(int(record["epoch"]), []).append(100 * record["accuracy"])
        if curves:
            epochs = sorted(curves)
            series.append(
                Series(row["name"], epochs, [statistics.fmean(curves[e]) for e in epochs])
            )
    if series:
        line_chart(
            out / "val-accuracy.png",
            series,
            "validation accuracy, mean over seeds",
            "epoch",
            "validation accuracy %",
        )
        plots["validation accuracy per epoch"] = "val-accuracy.png"
    firsts = []
    for row in rows:
        started = [r for r in row["runs"] if (out / r["run_dir"] / "config.toml").is_file()]
        if started:
            firsts.append(out / started[0]["run_dir"])
    if firsts:
        make_report(firsts, out / "report")
        plots["report"] = "report/report.md"
    return plots


# ------------------------------------------------------------------------------ CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="the paper's ablation grid over seeds at an equal budget, aggregated",
        description="Train every variant of the ablation grid (MAML, MAML + each technique, "
        "MAML++ with transductive or per-step BN, first-order MAML) for each seed at the same "
        "budget on the same fixed test tasks, then write OUT/results.md, results.json and "
        "plots. Re-running continues: finished runs are skipped, interrupted ones resume.",
    )
    parser.add_argument("--dataset", default="omniglot", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=int,
        metavar="ITERS",
        help="meta-iterations per run, a multiple of the preset's epochs (default: the "
        "preset's, 100 x 500 for the paper presets); iterations per epoch = ITERS / epochs",
    )
    budget.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="instead of --budget: measure this device's speed and train each run for at "
        "most about SECONDS (training and validation; the test comes after)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument(
        "--variants", default="all", help="comma-separated subset of the grid (see --list)"
    )
    parser.add_argument("--out", metavar="DIR", help="default: runs/ablate-<task>-<budget>")
    parser.add_argument("--val-tasks", type=int, help="validation tasks (default: the preset's)")
    parser.add_argument("--test-tasks", type=int, default=600, help="fixed test tasks (600)")
    parser.add_argument("--tasks-per-batch", type=int, default=8, help="tasks per meta-batch")
    parser.add_argument("--top-k", type=int, help="test ensemble size (default: the preset's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra override for every run (repeatable), e.g. --set model.channels=32",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per run (0: the preset's; with --jobs N, cores / N)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding the datasets")
    parser.add_argument("--no-download", action="store_true", help="never download data")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="print the grid and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the arguments, print the runs, train nothing"
    )
    parser.add_argument(
        "--aggregate-only",
        metavar="OUT",
        help="only (re)write OUT/results.md, results.json and the plots from its runs",
    )
    parser.set_defaults(handler=_ablate)


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ConfigError(
                f"--seeds expects comma-separated non-negative integers, got {text!r}"
            )
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def parse_variants(text: str) -> list[Variant]:
    if text.strip() == "all":
        return list(GRID)
    chosen = []
    folders = {v.folder: v.name for v in GRID}  # run folder names work too ("mamlpp")
    for part in text.split(","):
        name = folders.get(part.strip(), part.strip())
        if name not in VARIANTS:
            close = difflib.get_close_matches(name, list(VARIANTS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown variant {name!r}{hint}; --list shows the grid")
        if VARIANTS[name] not in chosen:
            chosen.append(VARIANTS[name])
    return [v for v in GRID if v in chosen]


def _check_positive(**values: int | float | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} must be >= 1, got {value:g}")


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of a ``mamlpp ablate`` invocation (not yet merged with OUT's)."""
    from .presets import resolve_config

    if args.dataset not in DATASETS:
        close = difflib.get_close_matches(args.dataset, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"--dataset must be one of {', '.join(DATASETS)}, got {args.dataset!r}{hint}"
        )
    _check_positive(
        ways=args.ways,
        shots=args.shots,
        budget=args.budget,
        test_tasks=args.test_tasks,
        tasks_per_batch=args.tasks_per_batch,
        val_tasks=args.val_tasks,
        top_k=args.top_k,
        jobs=args.jobs,
    )
    if args.time_budget is not None and not args.time_budget > 0:
        raise ConfigError(f"--time-budget must be > 0 seconds, got {args.time_budget:g}")
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    seeds = parse_seeds(args.seeds)
    variants = parse_variants(args.variants)
    preset = base_preset(args.dataset, args.ways, args.shots)
    plan = Plan(
        dataset=args.dataset,
        ways=args.ways,
        shots=args.shots,
        base_preset=preset,
        epochs=0,
        budget=None,
        tasks_per_batch=args.tasks_per_batch,
        val_tasks=args.val_tasks,
        test_tasks=args.test_tasks,
        top_k=args.top_k,
        sets=list(args.set),
        variants=[v.name for v in variants],
        seeds=seeds,
        time_budget_s=args.time_budget,
    )
    base = resolve_config(preset, None, common_sets(plan, None))  # validates --set too
    plan.epochs = base.train.epochs
    if args.time_budget is None:
        budget = args.budget
        if budget is None:
            budget = base.train.epochs * base.train.iterations_per_epoch
        if budget < plan.epochs:
            raise ConfigError(
                f"--budget {budget} is below the preset's {plan.epochs} epochs: the budget "
                "shortens each epoch (iterations per epoch = budget / epochs), so it needs at "
                f"least one iteration per epoch (--budget {plan.epochs} or more)"
            )
        if budget % plan.epochs:
            low = budget // plan.epochs * plan.epochs
            raise ConfigError(
                f"--budget {budget} is not a multiple of the preset's {plan.epochs} epochs "
                f"(iterations per epoch = budget / epochs); use {low} or {low + plan.epochs}"
            )
        plan.budget = budget
    return plan


def default_out(plan: Plan) -> Path:
    size = f"b{plan.budget}" if plan.budget is not None else f"t{plan.time_budget_s:g}s"
    return Path("runs") / f"ablate-{plan.dataset}-{plan.ways}w{plan.shots}s-{size}"


def _list() -> None:
    from .presets import MAML_META

    print("The ablation grid (each variant over plain MAML; on values from the MAML++ preset):")
    for variant in GRID:
        extra = ", ".join(f"{k}={v}" for k, v in variant.fixed.items())
        techniques = " ".join(variant.techniques) or "-"
        print(f"  {variant.name:<20} {techniques:<26} {extra}")
    off = ", ".join(f"{k}={v}" for k, v in MAML_META.items())
    print(f"MAML (all off): {off}, bn_mode=transductive, second_order=True")


def _ablate(args: argparse.Namespace) -> int:
    if args.aggregate_only:
        out = Path(args.aggregate_only)
        results = aggregate(out)
        print(f"results: {out / 'results.md'} ({_count(results)})")
        return 0
    if args.list:
        _list()
        return 0
    plan = make_plan(args)
    out = Path(args.out) if args.out else default_out(plan)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    stored = read_plan(out)
    if stored is not None and plan.time_budget_s is not None and stored.budget is not None:
        plan.budget = stored.budget  # measured when the folder was started
        plan.time_budget_s = stored.time_budget_s
        plan.calibration = stored.calibration
    plan = merge_plan(stored, plan, out)
    variants = parse_variants(args.variants)
    seeds = parse_seeds(args.seeds)
    if args.dry_run:
        return _dry_run(plan, out, variants, seeds, args)
    start, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    say = _printer()
    say(f"ablation {out}: {len(variants)} variants x {len(seeds)} seeds; {plan.command(out)}")
    failures: list[RunOutcome] = []
    try:
        outcomes = run_ablation(
            plan,
            out,
            variants,
            seeds,
            jobs=args.jobs,
            device=args.device,
            data_dir=args.data_dir,
            download=not args.no_download,
            threads=args.threads,
            progress=not args.quiet,
            say=say,
        )
        failures = [o for o in outcomes if o.status.startswith("failed")]
    finally:
        if (out / PLAN_FILE).is_file():
            stored = read_plan(out) or plan
            stored.sessions.append(
                {
                    "started": started_at,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                    "jobs": args.jobs,
                    "device": args.device,
                    "threads": args.threads,
                    "runs": [f"{v.name}/seed{s}" for v in variants for s in seeds],
                }
            )
            write_plan(out, stored)
    results = aggregate(out)
    say(f"results: {out / 'results.md'} ({_count(results)})")
    if failures:
        names = ", ".join(f"{f.variant} seed {f.seed}" for f in failures[:3])
        more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
        raise MamlppError(
            f"{len(failures)} run(s) failed: {names}{more}; see their ablate.json and "
            "train.log, or re-run to retry"
        )
    return 0


def _count(results: dict[str, Any]) -> str:
    runs = [r for v in results["variants"] for r in v["runs"]]
    done = sum(r["status"] == "complete" for r in runs)
    return f"{done}/{len(runs)} runs complete"


def _printer() -> Callable[[str], None]:
    def say(text: str) -> None:
        print(text, flush=True)

    return say


def _dry_run(
    plan: Plan, out: Path, variants: list[Variant], seeds: list[int], args: argparse.Namespace
) -> int:
    """Print what would run (and check every run's configuration); write nothing."""
    threads = args.threads
    if threads == 0 and args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    from .train import resolve_device

    device = resolve_device(args.device) if args.device != "cuda" else "cuda"
    probe = (
        plan
        if plan.budget is not None
        else Plan.from_dict({**plan.to_dict(), "budget": plan.epochs})
    )
    todo, done = pending_runs(plan, out, variants, seeds)
    print(f"dry run: {plan.command(out)}")
    if plan.budget is None:
        print(
            f"budget: measured at the start for {plan.time_budget_s:g} s on {device} "
            f"({plan.epochs} epochs; the commands below show 1 iteration per epoch)"
        )
    else:
        print(
            f"budget: {plan.budget} meta-iterations = {plan.epochs} epochs x "
            f"{plan.iterations_per_epoch} x {plan.tasks_per_batch} tasks"
        )
    print(f"device {device}, jobs {args.jobs}, threads per run {threads or 'preset default'}")
    print(_data_note(plan.dataset, args.data_dir))
    for variant, seed in [*done, *todo]:
        run_config(probe, variant, seed, threads)  # raises on any bad configuration
        state = "finished, skipped" if (variant, seed) in done else "to run"
        run_dir = run_dir_of(out, variant, seed)
        print(
            f"{variant.name} seed {seed} ({state}): "
            f"{train_command(probe, variant, seed, run_dir, threads)}"
        )
    print(f"{len(todo)} to run, {len(done)} finished; results would go to {out / 'results.md'}")
    return 0


def _data_note(dataset: str, data_dir_arg: str | None) -> str:
    """Where the data would come from (the dry run only reports; it never downloads)."""
    from .data import data_dir, find_mini_imagenet, find_omniglot

    if dataset == "synthetic":
        return "data: generated in memory (synthetic)"
    root = data_dir(data_dir_arg)
    found = find_mini_imagenet(root) if dataset == "mini-imagenet" else find_omniglot(root)
    if found is None:
        return f"data: {dataset} NOT found in {root} (a real run downloads it unless --no-download)"
    return f"data: {dataset} found in {found}"


# ------------------------------------------------------------------------------ worker


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m mamlpp.ablate --worker OUT VARIANT SEED ...``: one run, for ``--jobs N``."""
    parser = argparse.ArgumentParser(prog="mamlpp.ablate")
    parser.add_argument("--worker", nargs=3, metavar=("OUT", "VARIANT", "SEED"), required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    out, name, seed = Path(args.worker[0]), args.worker[1], int(args.worker[2])
    try:
        from .datasource import load_splits
        from .train import resolve_device

        plan = read_plan(out)
        if plan is None or plan.budget is None or name not in VARIANTS:
            raise ConfigError(f"{out} has no usable {PLAN_FILE} for variant {name!r}")
        variant = VARIANTS[name]
        config = run_config(plan, variant, seed, args.threads)
        splits = load_splits(config.data, args.data_dir, download=False, progress=False)
        run_one(plan, out, variant, seed, splits, resolve_device(args.device), threads=args.threads)
    except MamlppError as error:
        print(f"mamlpp: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
