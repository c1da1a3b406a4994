"""The plan of an ablation folder (``OUT/ablation.json``) and the configuration and command
of each of its runs."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MamlppError
from ..experiment import toml_value
from ..presets import PRESETS, resolve_config
from ..runs import write_json
from .grid import GRID, TECHNIQUE_KEYS, VARIANTS, Variant, variant_meta

DATASETS = ("omniglot", "omniglot-vinyals", "mini-imagenet", "synthetic")

PLAN_FILE = "ablation.json"

PLAN_FORMAT = 1


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
    if dataset == "synthetic":
        return "synthetic"
    family = "mini-imagenet" if dataset == "mini-imagenet" else "omniglot"
    exact = f"{family}-{ways}w{shots}s"
    return exact if exact in PRESETS else f"{family}-5w1s"


def _set_value(value: Any) -> str:
    """A ``--set`` value: a bare word where the parser takes it as text (readable commands),
    else the TOML literal."""
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
    return resolve_config(plan.base_preset, None, common_sets(plan, plan.iterations_per_epoch))


def base_config_or_probe(plan: Plan):
    """The base config; with the budget still unknown, a probe with one iteration per epoch."""
    if plan.budget is None:
        return base_config(Plan.from_dict({**plan.to_dict(), "budget": plan.epochs}))
    return base_config(plan)


def run_config(plan: Plan, variant: Variant, seed: int, threads: int = 0):
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


def train_argv(plan: Plan, variant: Variant, seed: int, run_dir: Path, threads: int = 0):
    """The ``mamlpp`` arguments that train (or continue) one run."""
    args = ["train", "--preset", plan.base_preset]
    for assignment in run_sets(plan, variant, seed, threads):
        args += ["--set", assignment]
    return [*args, "--out", str(run_dir), "--resume"]


def train_command(plan: Plan, variant: Variant, seed: int, run_dir: Path, threads: int = 0) -> str:
    """The equivalent ``mamlpp train`` command of one run."""
    return shlex.join(["mamlpp", *train_argv(plan, variant, seed, run_dir, threads)])


def run_dir_of(out: Path, variant: Variant, seed: int) -> Path:
    return out / variant.folder / f"seed{seed}"


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
