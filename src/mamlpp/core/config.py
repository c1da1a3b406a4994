"""The algorithm's configuration: one frozen dataclass, each MAML++ technique an independent switch.

Defaults are MAML++ on Omniglot ("How to train your MAML", Antoniou et al., ICLR 2019, section 4;
where the paper and its reference code differ, ``docs/algorithm.md`` says which is the default).
Plain MAML and first-order MAML are configurations of the same learner, see :meth:`MetaConfig.maml`
and :meth:`MetaConfig.fomaml`.

:func:`check_field` is the one check of a configuration value against its field's annotation,
used by :class:`MetaConfig` and by the experiment configuration (:mod:`mamlpp.run.experiment`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mamlpp.errors import ConfigError

# Which statistics normalise the query (target and prediction) passes: the query batch's own
# ("transductive"), the stored per-step running statistics at evaluation ("per_step"), or the
# support set's ("support", training and evaluation; batch-independent predictions). Every mode
# folds the passes' batch statistics into the running ones; only "per_step" reads them.
BnMode = Literal["transductive", "per_step", "support"]
TaskReduction = Literal["mean", "sum"]


@dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of the MAML++ learner.

    ====  ==============================================  ==============================
    tag   technique                                       fields
    ====  ==============================================  ==============================
    MSL   multi-step loss, annealed per-step weights      ``msl``, ``msl_epochs``
    DA    derivative-order annealing                      ``second_order``,
                                                          ``first_order_epochs``
    BNRS  per-step batch-norm running statistics          ``per_step_bn_stats``,
                                                          ``bn_mode``
    BNWB  per-step batch-norm weights and biases          ``per_step_bn_affine``
    LSLR  learned per-layer per-step inner learning rate  ``learn_inner_lrs``, ``inner_lr``
    CA    cosine annealing of the outer learning rate     ``cosine_lr``, ``meta_lr_min``,
                                                          ``total_epochs``
    ====  ==============================================  ==============================
    """

    num_inner_steps: int = 5
    inner_lr: float = 0.1
    learn_inner_lrs: bool = True
    msl: bool = True
    msl_epochs: int = 10
    second_order: bool = True
    # Epochs trained first order before switching to second order; 0 = second order throughout.
    first_order_epochs: int = 50
    per_step_bn_stats: bool = True
    bn_mode: BnMode = "transductive"
    per_step_bn_affine: bool = True
    # Also adapt BN gamma/beta (shape (C,)) in the inner loop; the reference's extra flag.
    adapt_bn_affine: bool = False
    meta_lr: float = 1e-3
    cosine_lr: bool = True
    meta_lr_min: float = 1e-5
    total_epochs: int = 100
    # Elementwise clamp of the network's meta-gradients to [-grad_clip, grad_clip]
    # (not the LSLR table); the reference uses 10 on mini-ImageNet.
    grad_clip: float | None = None
    task_reduction: TaskReduction = "mean"
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        validate_meta_config(self)

    # -- named configurations -------------------------------------------------------------
    @classmethod
    def maml(cls, **overrides: Any) -> MetaConfig:
        """Plain MAML (Finn et al. 2017): all six techniques off, second order throughout."""
        fields: dict[str, Any] = dict(
            learn_inner_lrs=False,
            msl=False,
            first_order_epochs=0,
            per_step_bn_stats=False,
            per_step_bn_affine=False,
            cosine_lr=False,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def fomaml(cls, **overrides: Any) -> MetaConfig:
        """First-order MAML: plain MAML with inner gradients treated as constants."""
        return cls.maml(**{"second_order": False, **overrides})

    def replace(self, **changes: Any) -> MetaConfig:
        return dataclasses.replace(self, **changes)

    @property
    def techniques(self) -> dict[str, bool]:
        """Which of the six MAML++ techniques are switched on."""
        return {
            "MSL": self.msl,
            "DA": self.second_order and self.first_order_epochs > 0,
            "BNRS": self.per_step_bn_stats,
            "BNWB": self.per_step_bn_affine,
            "LSLR": self.learn_inner_lrs,
            "CA": self.cosine_lr,
        }


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls``, by field name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# How a type reads in an error message: to a Python caller, and to someone writing TOML/--set.
_TYPE_WORDS: dict[type, tuple[str, str]] = {
    bool: ("bool", "true or false"),
    int: ("int", "an integer"),
    float: ("float", "a number"),
    str: ("str", "a string"),
}


def check_field(key: str, value: Any, hint: Any, *, toml: bool = False) -> Any:
    """Check ``value`` against the field annotation ``hint``; raise a one-line ConfigError
    naming ``key``. Returns the value, an int given for a float converted to float.

    Understood annotations: ``bool``, ``int``, ``float`` (an int is accepted), ``str``,
    ``Literal[...]`` and ``X | None``. ``bool`` is never taken for a number, nor a number for a
    ``bool``. With ``toml`` (values read from TOML or ``--set``) the messages use TOML's words
    (``true or false``, ``an integer``, ...), the string ``"none"`` means None (TOML has no
    null), and a float must be finite; a Python caller's values get Python's type names.
    """
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{key} must be one of {options}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (toml and isinstance(value, str) and value.lower() == "none"):
            return None
        return check_field(key, value, args[0], toml=toml)
    if hint not in _TYPE_WORDS:
        raise TypeError(f"unsupported config field type {hint!r} for {key}")  # programming error
    expected = _TYPE_WORDS[hint][1 if toml else 0]
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    if hint is float:
        if toml and not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return float(value)
    return value


def validate_meta_config(config: MetaConfig) -> None:
    """Raise ConfigError (one line) for a wrong type, a bad value or an impossible combination."""
    for name, hint in field_types(MetaConfig).items():
        check_field(name, getattr(config, name), hint)

    if config.num_inner_steps < 1:
        raise ConfigError(f"num_inner_steps must be >= 1, got {config.num_inner_steps}")
    if config.msl_epochs < 1:
        raise ConfigError(f"msl_epochs must be >= 1, got {config.msl_epochs}")
    if config.first_order_epochs < 0:
        raise ConfigError(
            f"first_order_epochs must be >= 0 (0 = second order throughout), "
            f"got {config.first_order_epochs}"
        )
    if config.total_epochs < 1:
        raise ConfigError(f"total_epochs must be >= 1, got {config.total_epochs}")
    if not 0 < config.inner_lr < float("inf"):
        # The initial (or fixed) inner step size; LSLR may still learn negative rates later.
        raise ConfigError(f"inner_lr must be > 0, got {config.inner_lr}")
    if config.meta_lr <= 0:
        raise ConfigError(f"meta_lr must be > 0, got {config.meta_lr}")
    if config.meta_lr_min < 0 or config.meta_lr_min > config.meta_lr:
        raise ConfigError(
            f"meta_lr_min must lie in [0, meta_lr={config.meta_lr}], got {config.meta_lr_min}"
        )
    if not 0.0 < config.bn_momentum <= 1.0:
        raise ConfigError(f"bn_momentum must lie in (0, 1], got {config.bn_momentum}")
    if config.grad_clip is not None and config.grad_clip <= 0:
        raise ConfigError(
            f'grad_clip must be > 0, or "none" for no clipping (None in Python), got '
            f"{config.grad_clip}"
        )
    if config.adapt_bn_affine and config.per_step_bn_affine:
        raise ConfigError(
            "adapt_bn_affine=True needs per_step_bn_affine=False: inner-loop adaptation applies "
            "to shared (C,) BN weights and biases, as in the reference"
        )
