"""The algorithm's configuration: one frozen dataclass, each MAML++ technique an independent switch.

Defaults are MAML++ on Omniglot (spec section 1). Plain MAML and first-order MAML are
configurations of the same learner, see :meth:`MetaConfig.maml` and :meth:`MetaConfig.fomaml`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mamlpp.errors import ConfigError

BnMode = Literal["transductive", "per_step"]
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
        fields = dict(
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


def _check_type(config: MetaConfig, name: str, kinds: tuple[type, ...], optional: bool = False):
    value = getattr(config, name)
    if optional and value is None:
        return
    # bool is an int subclass: reject it where a number is expected, and vice versa.
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{name} must be {kinds[0].__name__}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{name} must be {kinds[0].__name__}, got {value!r}")


def validate_meta_config(config: MetaConfig) -> None:
    """Raise ConfigError (one line) for a wrong type, a bad value or an impossible combination."""
    for name in ("learn_inner_lrs", "msl", "second_order", "per_step_bn_stats"):
        _check_type(config, name, (bool,))
    for name in ("per_step_bn_affine", "adapt_bn_affine", "cosine_lr"):
        _check_type(config, name, (bool,))
    for name in ("num_inner_steps", "msl_epochs", "first_order_epochs", "total_epochs"):
        _check_type(config, name, (int,))
    for name in ("inner_lr", "meta_lr", "meta_lr_min", "bn_momentum"):
        _check_type(config, name, (float, int))
    _check_type(config, "grad_clip", (float, int), optional=True)

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
        raise ConfigError(f"grad_clip must be > 0 or None, got {config.grad_clip}")
    if config.bn_mode not in ("transductive", "per_step"):
        raise ConfigError(f"bn_mode must be 'transductive' or 'per_step', got {config.bn_mode!r}")
    if config.task_reduction not in ("mean", "sum"):
        raise ConfigError(f"task_reduction must be 'mean' or 'sum', got {config.task_reduction!r}")
    if config.adapt_bn_affine and config.per_step_bn_affine:
        raise ConfigError(
            "adapt_bn_affine=True needs per_step_bn_affine=False: inner-loop adaptation applies "
            "to shared (C,) BN weights and biases, as in the reference"
        )
