"""Per-epoch schedules of MAML++ (MSL, DA, CA: "How to train your MAML", section 4) as pure
functions of the (integer) epoch; ``docs/algorithm.md`` describes each.

All three change once per epoch, never per iteration.
"""

from __future__ import annotations

import math

from mamlpp.core.config import MetaConfig


def msl_weights(epoch: int, num_steps: int, msl_epochs: int) -> list[float]:
    """Multi-step-loss weights w_0..w_{S-1} at ``epoch`` (MSL).

    Non-final steps decay linearly from 1/S to a floor of 0.03/S over ``msl_epochs`` epochs;
    the final step grows to take the rest. Example, S=5, E=10: epoch 1 -> [0.18]*4 + [0.28].
    """
    s, e = num_steps, epoch
    non_final = max(1.0 / s - e / (s * msl_epochs), 0.03 / s)
    final = min(1.0 / s + e * (s - 1) / (s * msl_epochs), 1.0 - (s - 1) * 0.03 / s)
    return [non_final] * (s - 1) + [final]


def msl_active(epoch: int, config: MetaConfig) -> bool:
    """MSL counts every step's query loss before ``msl_epochs``; afterwards only the last."""
    return config.msl and epoch < config.msl_epochs


def step_loss_weights(epoch: int, config: MetaConfig) -> list[float] | None:
    """The MSL weights in force at ``epoch``, or None when only the final query loss counts."""
    if not msl_active(epoch, config):
        return None
    return msl_weights(epoch, config.num_inner_steps, config.msl_epochs)


def second_order_at(epoch: int, config: MetaConfig) -> bool:
    """Derivative-order annealing (DA): first order for ``first_order_epochs`` epochs, then
    second order (if ``second_order`` at all)."""
    return config.second_order and epoch >= config.first_order_epochs


def outer_lr(epoch: int, config: MetaConfig) -> float:
    """Outer (Adam) learning rate at ``epoch``: cosine annealing (CA) or constant."""
    if not config.cosine_lr:
        return config.meta_lr
    progress = min(max(epoch, 0), config.total_epochs) / config.total_epochs
    cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
    return config.meta_lr_min + (config.meta_lr - config.meta_lr_min) * cosine
