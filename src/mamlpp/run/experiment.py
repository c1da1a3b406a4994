"""The experiment configuration: a frozen tree of sections, read from presets, TOML and ``--set``.

Precedence: preset, then a TOML file, then ``--set section.key=value`` overrides. Every key is
checked against the dataclass field types, so an unknown key, a wrong type or an impossible
combination is a one-line :class:`~mamlpp.errors.ConfigError` (exit code 2 in the CLI).

Sections::

    preset = "quickstart"           # the base the run was built from (informational)
    [data]   dataset, ways, shots, targets (query images per class), image_size; for own
             image folders also channels, normalize, resize, val_fraction, test_fraction,
             split_seed, groups, sources, source_pattern
    [model]  backbone ("conv4" or "resnet12"), channels
    [meta]   exactly the MetaConfig fields except total_epochs, which is train.epochs
    [train]  epochs, iterations_per_epoch, tasks_per_batch, seed, log_every, checkpoint_every,
             threads, tensorboard
    [eval]   val_tasks, test_tasks, batch_size, top_k, val_seed, test_seed

``meta.total_epochs`` is not a key of its own: cosine annealing, the MSL and DA schedules and the
loop all count the same ``train.epochs``, so they can never disagree.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import tomli_w

from mamlpp.core.config import MetaConfig
from mamlpp.core.executions import Execution
from mamlpp.data.section import DataSection, check_section  # [data] lives with the data
from mamlpp.engine.precision import Precision
from mamlpp.errors import ConfigError
from mamlpp.util.fields import check_field, check_fields, field_bounds, field_types
from mamlpp.util.format import did_you_mean

BackboneName = Literal["conv4", "resnet12"]


@dataclass(frozen=True)
class ModelSection:
    backbone: BackboneName = "conv4"
    # conv4: filters per layer (64 on Omniglot, 48 on mini-ImageNet); resnet12: the first
    # block's width, the others 2.5x, 5x and 10x of it (64 -> the standard 64-160-320-640).
    channels: int = field(default=64, metadata={"min": 1})


@dataclass(frozen=True)
class TrainSection:
    epochs: int = field(default=100, metadata={"min": 1})
    iterations_per_epoch: int = field(default=500, metadata={"min": 1})
    tasks_per_batch: int = field(default=8, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0})
    # A metrics line (means over the window) every log_every iterations and at each epoch end.
    log_every: int = field(default=25, metadata={"min": 1})
    # An extra mid-epoch checkpoint every N iterations (0: only at the end of each epoch).
    checkpoint_every: int = field(default=0, metadata={"min": 0})
    threads: int = field(default=0, metadata={"min": 0})  # torch CPU threads; 0: torch's default
    tensorboard: bool = True  # log to RUN_DIR/tensorboard when the optional extra is installed
    # On CUDA: replay each meta-iteration from a CUDA graph (engine.step_runner.MetaStepRunner).
    cuda_graph: bool = True
    # When capture fails: "error" stops with the operation and source line that broke it;
    # "eager" warns, trains without graphs and records that in the log and summary.json.
    graph_fallback: Literal["error", "eager"] = "error"
    # Distributed: the collectives inside the graph or eagerly between the replays of its two
    # phases; "auto": inside for NCCL, after the replay otherwise (mamlpp.engine.collectives).
    graph_sync: Literal["auto", "in-graph", "after-replay"] = "auto"
    # Float arithmetic of the meta-iteration on a GPU (docs/precision.md): "fp32", "tf32"
    # (TF32 matmuls/convolutions; ignored on the CPU) or "bf16" (bfloat16 autocast forwards).
    precision: Precision = "fp32"
    # How the tasks of a meta-batch run: "auto" measures the candidates on CUDA at start (the
    # CPU uses "batched"), or one of "batched" (grouped convolutions), "loop", "vmap".
    execution: Literal["auto"] | Execution = "auto"


@dataclass(frozen=True)
class EvalSection:
    val_tasks: int = field(default=600, metadata={"min": 1})
    test_tasks: int = field(default=600, metadata={"min": 1})
    batch_size: int = field(default=50, metadata={"min": 1})  # tasks adapted in one batched call
    # Checkpoints in the test ensemble (paper-era code: 3, later: 5).
    top_k: int = field(default=5, metadata={"min": 1})
    val_seed: int = field(default=1, metadata={"min": 0})
    test_seed: int = field(default=2, metadata={"min": 0})


# Keys of MetaConfig that the [meta] section exposes: all but total_epochs (= train.epochs).
META_KEYS = tuple(f.name for f in fields(MetaConfig) if f.name != "total_epochs")


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str = "quickstart"
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (the form stored in checkpoints and config.toml)."""
        tree: dict[str, Any] = {"preset": self.preset}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            if name == "meta":
                section.pop("total_epochs")
            tree[name] = section
        return tree

    @property
    def techniques(self) -> list[str]:
        """The MAML++ techniques switched on, in the paper's order (empty = plain MAML)."""
        return [tag for tag, on in self.meta.techniques.items() if on]

    @property
    def active_techniques(self) -> list[str]:
        """The techniques switched on that take effect in a run of ``train.epochs`` epochs
        (what ``summary.json`` lists): :attr:`techniques` without :meth:`idle_techniques`."""
        idle = self.idle_techniques()
        return [tag for tag in self.techniques if tag not in idle]

    def idle_techniques(self) -> dict[str, str]:
        """``{tag: why}`` of the techniques switched on that never take effect in this run:
        DA whose second order would start after the last epoch, MSL with one inner step (its
        only step is the final one), CA whose rate cannot change (``meta_lr_min`` equal to
        ``meta_lr``, or one epoch). Each ``why`` is one line saying what to set."""
        m, epochs = self.meta, self.train.epochs
        idle = {}
        if "DA" in self.techniques and m.first_order_epochs >= epochs:
            idle["DA"] = (
                "derivative-order annealing never switches to second order: "
                f"meta.first_order_epochs={m.first_order_epochs} >= train.epochs={epochs}, so "
                f"every epoch trains first order; set meta.first_order_epochs below {epochs} "
                "(0: second order throughout), or meta.second_order=false for first order "
                "on purpose"
            )
        if "MSL" in self.techniques and m.num_inner_steps == 1:
            idle["MSL"] = (
                "the multi-step loss has nothing to weigh: with meta.num_inner_steps=1 the only "
                "step is the final one; set meta.num_inner_steps above 1, or meta.msl=false"
            )
        if "CA" in self.techniques and (m.meta_lr_min == m.meta_lr or epochs == 1):
            why = (
                f"meta.meta_lr_min equals meta.meta_lr ({m.meta_lr:g})"
                if m.meta_lr_min == m.meta_lr
                else "train.epochs=1 (the rate is set once per epoch)"
            )
            idle["CA"] = (
                f"cosine annealing never changes the outer learning rate: {why}; set "
                "meta.meta_lr_min below meta.meta_lr and train.epochs above 1, or "
                "meta.cosine_lr=false"
            )
        return idle

    def schedule_warnings(self) -> list[str]:
        """One line per technique that is switched on but idle (:meth:`idle_techniques`) or cut
        short by ``train.epochs`` (an MSL schedule longer than the run never finishes annealing);
        the trainer prints them as warnings before training starts."""
        lines = list(self.idle_techniques().values())
        m, epochs = self.meta, self.train.epochs
        if "MSL" in self.active_techniques and m.msl_epochs > epochs:
            lines.append(
                "the multi-step loss never finishes annealing: meta.msl_epochs="
                f"{m.msl_epochs} > train.epochs={epochs}, so its weights stop at epoch "
                f"{epochs} of {m.msl_epochs} and the final-step-only loss never comes; set "
                f"meta.msl_epochs to at most {epochs}"
            )
        return lines


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelSection,
    "meta": MetaConfig,
    "train": TrainSection,
    "eval": EvalSection,
}


# ------------------------------------------------------------------------------ building


def _checked_values(section: str, cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A section's TOML/--set values, each checked against its field's type and range with the
    words of TOML (``"none"``, ``true or false``)."""
    types_, bounds = field_types(cls), field_bounds(cls)
    return {
        key: check_field(f"{section}.{key}", value, types_[key], toml=True, bounds=bounds[key])
        for key, value in values.items()
    }


def build_config(tree: dict[str, Any]) -> ExperimentConfig:
    """An ExperimentConfig from a (possibly partial) nested dict, fully validated."""
    check_keys(tree, where="config")
    preset = tree.get("preset", "quickstart")
    if not isinstance(preset, str):
        raise ConfigError(f"preset must be a string, got {preset!r}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        if name == "meta":
            continue  # built below, once train.epochs is known
        sections[name] = cls(**_checked_values(name, cls, tree.get(name, {})))
    meta_values = _checked_values("meta", MetaConfig, tree.get("meta", {}))
    check_fields(sections["train"], "train.")  # train.epochs before meta.total_epochs
    # MetaConfig's own validation (types, ranges, combinations) applies here; its messages
    # name bare fields, so they get their section.
    try:
        meta = MetaConfig(**meta_values, total_epochs=sections["train"].epochs)
    except ConfigError as error:
        raise ConfigError(f"meta.{error}") from None
    config = ExperimentConfig(preset=preset, meta=meta, **sections)
    validate(config)
    return config


def check_keys(tree: dict[str, Any], where: str) -> None:
    """Unknown sections and keys are errors, with a did-you-mean suggestion."""
    for name, value in tree.items():
        if name == "preset":
            continue
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {where}{did_you_mean(name, SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] in {where} must be a table of key = value pairs")
        known = _known_keys(name)
        for key in value:
            if name == "meta" and key == "total_epochs":
                raise ConfigError("meta.total_epochs is set by train.epochs; set train.epochs")
            if key not in known:
                raise ConfigError(f"unknown key {name}.{key} in {where}{did_you_mean(key, known)}")


def _known_keys(section: str) -> tuple[str, ...]:
    if section == "meta":
        return META_KEYS
    return tuple(f.name for f in fields(SECTIONS[section]))


def validate(config: ExperimentConfig) -> None:
    """Ranges (in the fields' metadata) and combinations across sections (MetaConfig validates
    its own fields)."""
    check_fields(config)  # every section's fields: types and the ranges in their metadata
    check_section(config.data)  # data.dataset and what its table entry allows
    t = config.train
    if t.checkpoint_every and t.checkpoint_every % t.log_every:
        # Metrics windows must be closed at every checkpoint, or a resume would lose half a
        # window and the metrics file would differ from an uninterrupted run.
        raise ConfigError(
            f"train.checkpoint_every ({t.checkpoint_every}) must be a multiple of "
            f"train.log_every ({t.log_every})"
        )


# ------------------------------------------------------------------------------ TOML and --set


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def parse_set(assignment: str) -> tuple[str, str, Any]:
    """``"train.epochs=3"`` -> ``("train", "epochs", 3)``.

    The value is read as a TOML literal (``3``, ``1e-3``, ``true``, ``"x"``); anything that is
    not one (``omniglot``) is taken as a plain string.
    """
    key, sep, text = assignment.partition("=")
    key, text = key.strip(), text.strip()
    section, dot, name = key.partition(".")
    if not sep or not dot or not section or not name or "." in name:
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, name, value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; ``override`` wins (returns a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def to_toml(config: ExperimentConfig, header: str = "") -> str:
    """The resolved configuration as TOML (written by tomli-w) that :func:`read_toml` +
    :func:`build_config` read back to an equal config; ``None`` is written as ``"none"``."""
    tree = config.to_dict()
    tables = {name: {k: _toml_safe(v) for k, v in tree[name].items()} for name in SECTIONS}
    comments = [*header.splitlines(), "meta.total_epochs is train.epochs"]
    body = tomli_w.dumps({"preset": tree["preset"], **tables})
    return "".join(f"# {line}\n" for line in comments) + body


def toml_value(value: Any) -> str:
    """One value as a TOML literal (what ``--set section.key=VALUE`` reads back)."""
    return tomli_w.dumps({"v": _toml_safe(value)}).removeprefix("v = ").strip()


def _toml_safe(value: Any) -> Any:
    return "none" if value is None else value


# ------------------------------------------------------------------------------ resume checks

# Keys that may differ when a run is resumed: they change neither the training stream nor the
# checkpoints it writes.
RESUMABLE_CHANGES = frozenset(
    {
        "eval.test_tasks",
        "eval.batch_size",
        "eval.top_k",
        "train.tensorboard",
        "train.threads",
        # Same mathematics, another way to run it.
        "train.cuda_graph",
        "train.graph_fallback",
        "train.graph_sync",
        "train.execution",
    }
)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.key`` of every value that differs between two config dicts. A key missing
    from one of them (a run saved before the key existed) counts as its default value."""
    diffs = []
    for name in SECTIONS:
        defaults = {f.name: f.default for f in fields(SECTIONS[name])}
        for key in sorted(set(old.get(name, {})) | set(new.get(name, {}))):
            before = old.get(name, {}).get(key, defaults.get(key))
            if before != new.get(name, {}).get(key, defaults.get(key)):
                diffs.append(f"{name}.{key}")
    return diffs


def check_resumable(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to continue a run with a config that would change what it trains."""
    # A key added to mamlpp after the run started (e.g. data.channels) did not exist then: the
    # run behaved as its default does, so the default stands in for it.
    old = merge(ExperimentConfig().to_dict(), old)
    blocking = [k for k in config_differences(old, new) if k not in RESUMABLE_CHANGES]
    if blocking:
        shown = ", ".join(f"{k} ({_get(old, k)!r} -> {_get(new, k)!r})" for k in blocking[:4])
        more = f" and {len(blocking) - 4} more" if len(blocking) > 4 else ""
        raise ConfigError(
            f"cannot resume: the config differs from the run's in {shown}{more}; "
            "start a new run (another --out) instead"
        )


def _get(tree: dict[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return tree.get(section, {}).get(key)
