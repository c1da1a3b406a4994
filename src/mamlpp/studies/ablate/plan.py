"""The plan of an ablation folder (``OUT/ablation.json``) and the configuration and command
of each of its runs."""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamlpp.data.table import ABLATION_DATASETS
from mamlpp.errors import ConfigError, MamlppError
from mamlpp.run.experiment import ExperimentConfig, toml_value
from mamlpp.run.presets import PRESETS, resolve_config
from mamlpp.run.run_dir import RunDir, write_json
from mamlpp.studies.ablate.grid import GRID, VARIANTS, Variant, variant_meta

# The datasets the grid offers: the entries of the dataset table marked for it (a live view).
DATASETS = ABLATION_DATASETS

PLAN_FILE = "ablation.json"
PLAN_FORMAT = 1
RUN_RECORD = "ablate.json"  # per run: its command and status, written by the runner

# The options of `mamlpp ablate` that set one config key in every run (None: the preset's
# value). They change what a run trains or how it is tested, so a folder keeps them.
SHARED_OPTIONS = {
    "dataset": "data.dataset",
    "ways": "data.ways",
    "shots": "data.shots",
    "tasks_per_batch": "train.tasks_per_batch",
    "val_tasks": "eval.val_tasks",
    "test_tasks": "eval.test_tasks",
    "top_k": "eval.top_k",
}


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

    @property
    def iterations_per_epoch(self) -> int | None:
        return None if self.budget is None else self.budget // self.epochs

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {"format": PLAN_FORMAT, **fields, "iterations_per_epoch": self.iterations_per_epoch}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def probe(self) -> Plan:
        """This plan; before a time budget is measured, with one iteration per epoch (what
        calibration times, and what a dry run shows)."""
        return self if self.budget is not None else dataclasses.replace(self, budget=self.epochs)

    def variant_list(self) -> list[Variant]:
        return [VARIANTS[name] for name in self.variants if name in VARIANTS]

    def shared_sets(self) -> list[str]:
        """The ``--set`` overrides of every run, before the variant's; without a budget yet,
        the preset's iterations per epoch."""
        values = {key: getattr(self, name) for name, key in SHARED_OPTIONS.items()}
        sets = [f"{key}={value}" for key, value in values.items() if value is not None]
        if self.budget is not None:
            sets.append(f"train.iterations_per_epoch={self.iterations_per_epoch}")
        return sets + self.sets

    def command(self, out: Path) -> str:
        """The canonical ``mamlpp ablate`` command of this plan (all settings explicit)."""
        args = ["mamlpp", "ablate"]
        for name in SHARED_OPTIONS:
            if getattr(self, name) is not None:
                args += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        if self.time_budget_s is not None:
            args += ["--time-budget", f"{self.time_budget_s:g}"]
        elif self.budget is not None:
            args += ["--budget", str(self.budget)]
        args += ["--seeds", ",".join(map(str, self.seeds)), "--variants", ",".join(self.variants)]
        for assignment in self.sets:
            args += ["--set", assignment]
        return shlex.join([*args, "--out", str(out)])


def base_preset(dataset: str, ways: int, shots: int) -> str:
    """The MAML++ preset an ablation of ``dataset`` starts from (ways/shots are set anyway)."""
    if dataset == "synthetic":
        return "synthetic"
    own = f"{dataset}-{ways}w{shots}s"  # a dataset with presets of its own (omniglot-lake)
    if own in PRESETS:
        return own
    family = "mini-imagenet" if dataset == "mini-imagenet" else "omniglot"
    exact = f"{family}-{ways}w{shots}s"
    return exact if exact in PRESETS else f"{family}-5w1s"


def base_config(plan: Plan) -> ExperimentConfig:
    """The MAML++ base configuration (preset + the plan's settings) before any variant."""
    return resolve_config(plan.base_preset, None, plan.shared_sets())


def run_sets(plan: Plan, variant: Variant, seed: int, threads: int = 0) -> list[str]:
    """Every ``--set`` of one run, as ``mamlpp train`` takes them."""
    meta = variant_meta(variant, base_config(plan).meta)
    # The grid's [meta] values are bools, ints and words ("per_step"), written bare.
    sets = [f"meta.{k}={v if isinstance(v, str) else toml_value(v)}" for k, v in meta.items()]
    threads_set = [f"train.threads={threads}"] if threads else []
    return [*plan.shared_sets(), *sets, f"train.seed={seed}", *threads_set]


def run_config(plan: Plan, variant: Variant, seed: int, threads: int = 0) -> ExperimentConfig:
    """The resolved ExperimentConfig of one run; its techniques must be the variant's."""
    config = resolve_config(plan.base_preset, None, run_sets(plan, variant, seed, threads))
    if tuple(config.techniques) != tuple(variant.techniques):
        have = " ".join(config.techniques) or "none"
        want = " ".join(variant.techniques) or "none"
        raise ConfigError(
            f"variant {variant.name} should switch on {want} but its config has {have} "
            f"(an --set override turns a technique off?)"
        )
    return config


def train_argv(plan: Plan, variant: Variant, seed: int, out: Path, threads: int = 0) -> list[str]:
    """The ``mamlpp`` arguments that train (or continue) one run of the ablation in ``out``."""
    args = ["train", "--preset", plan.base_preset]
    for assignment in run_sets(plan, variant, seed, threads):
        args += ["--set", assignment]
    return [*args, "--out", str(run_dir_of(out, variant, seed).root), "--resume"]


def run_dir_of(out: Path, variant: Variant, seed: int) -> RunDir:
    return RunDir(out / variant.folder / f"seed{seed}")


def is_finished(out: Path, variant: Variant, seed: int) -> bool:
    return run_dir_of(out, variant, seed).summary.is_file()


def read_plan(out: Path) -> Plan | None:
    path = out / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as error:
        raise MamlppError(f"{path} is unreadable ({error}); move it away to start over") from None


def write_plan(out: Path, plan: Plan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, plan.to_dict())


def merge_plan(old: Plan | None, new: Plan, out: Path) -> Plan:
    """Continue ``old`` with the variants and seeds of ``new``; other settings must agree. A
    --time-budget re-run (no budget yet) keeps the budget measured when the folder started."""
    if old is None:
        return new
    for key in (*SHARED_OPTIONS, "sets", "budget"):
        before, now = getattr(old, key), getattr(new, key)
        if before != now and not (key == "budget" and None in (before, now)):
            raise ConfigError(
                f"{out} holds an ablation with {key}={before!r}, not {now!r}; use the same "
                "settings to continue it or another --out"
            )
    variants = [v.name for v in GRID if v.name in {*old.variants, *new.variants}]
    return dataclasses.replace(old, variants=variants, seeds=sorted({*old.seeds, *new.seeds}))
