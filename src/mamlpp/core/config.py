"""The algorithm's configuration: one frozen dataclass, each MAML++ technique an independent switch.

Defaults are MAML++ on Omniglot ("How to train your MAML", Antoniou et al., ICLR 2019, section 4;
where the paper and its reference code differ, ``docs/algorithm.md`` says which is the default).
Plain MAML and first-order MAML are configurations of the same learner, see :meth:`MetaConfig.maml`
and :meth:`MetaConfig.fomaml`.

Each field's range is stated once, in its metadata (``metadata={"min": 1}``), and checked by
:func:`mamlpp.util.fields.check_fields`, as are the experiment configuration's sections.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mamlpp.errors import ConfigError
from mamlpp.util.fields import check_fields

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

    num_inner_steps: int = field(default=5, metadata={"min": 1})
    # The initial (or fixed) inner step size; LSLR may still learn negative rates later.
    inner_lr: float = field(default=0.1, metadata={"gt": 0, "finite": True})
    learn_inner_lrs: bool = True
    msl: bool = True
    msl_epochs: int = field(default=10, metadata={"min": 1})
    second_order: bool = True
    # Epochs trained first order before switching to second order; 0 = second order throughout.
    first_order_epochs: int = field(
        default=50, metadata={"min": 0, "why": "0 = second order throughout"}
    )
    per_step_bn_stats: bool = True
    bn_mode: BnMode = "transductive"
    per_step_bn_affine: bool = True
    # Also adapt BN gamma/beta (shape (C,)) in the inner loop; the reference's extra flag.
    adapt_bn_affine: bool = False
    meta_lr: float = field(default=1e-3, metadata={"gt": 0})
    cosine_lr: bool = True
    meta_lr_min: float = 1e-5
    total_epochs: int = field(default=100, metadata={"min": 1})
    # Elementwise clamp of the network's meta-gradients to [-grad_clip, grad_clip]
    # (not the LSLR table); the reference uses 10 on mini-ImageNet.
    grad_clip: float | None = field(default=None, metadata={"gt": 0, "none": "no clipping"})
    task_reduction: TaskReduction = "mean"
    bn_momentum: float = field(default=0.1, metadata={"gt": 0, "max": 1})

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


def validate_meta_config(config: MetaConfig) -> None:
    """Raise ConfigError (one line) for a wrong type, a bad value or an impossible combination."""
    check_fields(config)  # types and the ranges in the fields' metadata
    if config.meta_lr_min < 0 or config.meta_lr_min > config.meta_lr:
        raise ConfigError(
            f"meta_lr_min must lie in [0, meta_lr={config.meta_lr}], got {config.meta_lr_min}"
        )
    if config.adapt_bn_affine and config.per_step_bn_affine:
        raise ConfigError(
            "adapt_bn_affine=True needs per_step_bn_affine=False: inner-loop adaptation applies "
            "to shared (C,) BN weights and biases, as in the reference"
        )
