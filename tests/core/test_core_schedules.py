"""Schedules against fixed values from the paper and the reference code (MSL, DA, CA), and the
config's validation."""

from __future__ import annotations

import math

import pytest
from core_helpers import tiny_learner, tiny_tasks

from mamlpp import MetaConfig, msl_weights, outer_lr, second_order_at, step_loss_weights
from mamlpp.errors import ConfigError


def test_msl_weights_spec_fixtures():
    assert msl_weights(1, 5, 10) == pytest.approx([0.18, 0.18, 0.18, 0.18, 0.28], abs=1e-12)
    assert msl_weights(9, 5, 10) == pytest.approx([0.02] * 4 + [0.92], abs=1e-12)
    assert msl_weights(0, 5, 10) == pytest.approx([0.2] * 5, abs=1e-12)
    # The floor 0.03/S and the cap 1 - (S-1) 0.03/S hold late in annealing.
    assert msl_weights(100, 5, 10) == pytest.approx([0.006] * 4 + [0.976], abs=1e-12)


def test_msl_switches_off_abruptly_at_msl_epochs():
    config = MetaConfig(msl_epochs=10)
    assert step_loss_weights(9, config) == pytest.approx([0.02] * 4 + [0.92])
    assert step_loss_weights(10, config) is None
    assert step_loss_weights(0, config.replace(msl=False)) is None
    # The learner follows: five target losses at epoch 9, only the final one at epoch 10.
    learner = tiny_learner(MetaConfig(num_inner_steps=5, msl_epochs=10, first_order_epochs=0))
    batch = tiny_tasks()
    assert learner.meta_loss(batch, 9)[1]["step_losses"].shape == (5,)
    assert learner.meta_loss(batch, 10)[1]["step_losses"].shape == (1,)


def test_derivative_order_switches_at_the_exact_epoch():
    config = MetaConfig(first_order_epochs=50)
    assert not second_order_at(0, config)
    assert not second_order_at(49, config)
    assert second_order_at(50, config)
    assert second_order_at(99, config)
    assert second_order_at(0, config.replace(first_order_epochs=0))
    assert not second_order_at(99, config.replace(second_order=False))


def test_cosine_outer_lr_fixtures():
    config = MetaConfig(meta_lr=1e-3, meta_lr_min=1e-5, total_epochs=100)
    assert outer_lr(0, config) == pytest.approx(1e-3, rel=1e-12)
    assert outer_lr(50, config) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-12)
    expected_99 = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.99)) / 2
    assert outer_lr(99, config) == pytest.approx(expected_99, rel=1e-12)
    assert outer_lr(99, config) == pytest.approx(1.0244e-5, rel=1e-3)
    assert outer_lr(99, config.replace(cosine_lr=False)) == 1e-3


def test_named_configurations():
    maml = MetaConfig.maml()
    assert not any(maml.techniques.values())
    assert maml.second_order
    fo = MetaConfig.fomaml()
    assert not fo.second_order and not any(fo.techniques.values())
    assert all(MetaConfig().techniques.values())


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"num_inner_steps": 0}, "num_inner_steps"),
        ({"num_inner_steps": 2.5}, "num_inner_steps must be int"),
        ({"msl": "yes"}, "msl must be bool"),
        ({"bn_mode": "eval"}, "bn_mode"),
        ({"task_reduction": "max"}, "task_reduction"),
        ({"first_order_epochs": -1}, "first_order_epochs"),
        ({"meta_lr_min": 1.0}, "meta_lr_min"),
        ({"grad_clip": 0}, "grad_clip"),
        ({"adapt_bn_affine": True}, "adapt_bn_affine"),
        ({"inner_lr": True}, "inner_lr must be float"),
    ],
)
def test_bad_config_is_a_one_line_error(changes, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        MetaConfig(**changes)
    assert "\n" not in str(info.value)
