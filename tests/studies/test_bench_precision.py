"""Meta-gradient precision by parameter group (what `mamlpp bench` reports), in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from core_helpers import tiny_learner, tiny_tasks

from mamlpp import MetaConfig, TaskBatch
from mamlpp.studies.bench import (
    CONFIGS,
    build_problem,
    gradient_errors,
    meta_gradients,
    parameter_group,
)


def _float64_problem():
    learner, batch = build_problem(CONFIGS["tiny"], torch.device("cpu"))
    learner = copy.deepcopy(learner).double()
    return learner, tuple(t.double() if t.is_floating_point() else t for t in batch)


def test_parameter_groups():
    assert parameter_group("backbone.conv0.weight") == "conv weights"
    assert parameter_group("backbone.conv3.bias") == "conv biases"
    assert parameter_group("backbone.bn1.weight") == "batch norm"
    assert parameter_group("backbone.head.bias") == "head"
    assert parameter_group("inner_lrs") == "inner lrs"


def _conv_biases_after_training(silenced: bool) -> tuple[dict, dict]:
    """The conv biases (exact gradient 0: batch norm with batch statistics removes any
    per-channel shift) before and after three Adam meta-steps, with the learner's silencing of
    dead tensors on or (to show what it prevents) off."""
    learner = tiny_learner(MetaConfig(num_inner_steps=2, first_order_epochs=0))
    if not silenced:
        learner.dead_names = ()
    biases = {n: p for n, p in learner.named_parameters() if parameter_group(n) == "conv biases"}
    before = {n: p.detach().clone() for n, p in biases.items()}
    optimizer = learner.make_optimizer()
    for seed in range(3):
        learner.meta_step(optimizer, TaskBatch(*tiny_tasks(seed=seed)), 0)
    return before, {n: p.detach().clone() for n, p in biases.items()}


def test_dead_conv_biases_stay_bitwise_still_while_training():
    """Their meta-gradient in floating point is rounding noise, which Adam would turn into
    full-size steps; the learner keeps them exactly where they started. Without the silencing
    the same training moves them (so this test fails if the biases ever move)."""
    before, after = _conv_biases_after_training(silenced=True)
    assert len(before) == 4
    for name in before:
        assert torch.equal(before[name], after[name]), name
    before, after = _conv_biases_after_training(silenced=False)
    assert any(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
def test_gradient_errors_per_group_and_cosine():
    learner, batch = _float64_problem()
    reference = meta_gradients(learner, batch, "loop", "fp32")
    same = gradient_errors(meta_gradients(learner, batch, "batched", "fp32"), reference)
    assert same["all"]["rel_error"] < 1e-10 and same["all"]["cosine"] == pytest.approx(1.0)
    # A perturbation of one group shows up in that group (and the total), not the others.
    noisy = {n: g.clone() for n, g in reference.items()}
    noisy["backbone.head.weight"] += 0.1 * noisy["backbone.head.weight"].norm()
    errors = gradient_errors(noisy, reference)
    assert errors["head"]["rel_error"] > 0.01 and errors["all"]["rel_error"] > 0
    assert errors["conv weights"]["rel_error"] == 0 and errors["batch norm"]["rel_error"] == 0
    assert errors["head"]["cosine"] < 1.0


@pytest.mark.slow
def test_bf16_meta_gradients_are_close_in_direction():
    """bf16 autocast (forward passes only) on the CPU: far coarser than fp32 in every group
    (second-order meta-gradients amplify rounding), yet still a descent direction against
    float64. The measured figures are in docs/precision.md."""
    learner, batch = build_problem(CONFIGS["tiny"], torch.device("cpu"))
    reference = meta_gradients(*_float64_problem(), "loop", "fp32")
    errors = gradient_errors(meta_gradients(learner, batch, "batched", "bf16"), reference)
    assert 0.5 < errors["all"]["cosine"] < 0.99
    fp32 = gradient_errors(meta_gradients(learner, batch, "batched", "fp32"), reference)
    assert fp32["all"]["cosine"] > 0.9999
    assert 100 * fp32["all"]["rel_error"] < errors["all"]["rel_error"]
    # The bf16 error is not confined to the conv biases (whose exact gradient is zero).
    assert errors["conv weights"]["rel_error"] > 0.1 and errors["head"]["rel_error"] > 0.1
