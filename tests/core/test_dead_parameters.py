"""Dead parameters stay exactly still: a convolution or linear bias whose output goes straight
into batch norm (which normalises with batch statistics in every training pass) has an exact
gradient of 0; the learner makes its inner and outer gradients exactly 0, so Adam never moves it
on rounding noise.
"""

from __future__ import annotations

import pytest
import torch
from core_helpers import tiny_tasks
from torch import nn

from mamlpp import Conv4, MAMLpp, MetaConfig, ModuleBackbone, TaskBatch
from mamlpp.errors import ConfigError
from mamlpp.nn.conv4 import conv4_sequential

# LSLR, BNWB and BNRS on (the defaults); second order from epoch 1, MSL until epoch 2.
CONFIG = MetaConfig(num_inner_steps=2, first_order_epochs=1, msl_epochs=2, meta_lr=1e-2)
EPOCHS = (0, 0, 1, 1, 2)


def _batch(seed: int) -> list[torch.Tensor]:
    return [t.float() if t.is_floating_point() else t for t in tiny_tasks(seed=seed)]


def _train(learner: MAMLpp, epochs=EPOCHS) -> None:
    optimizer = learner.make_optimizer()
    for seed, epoch in enumerate(epochs):
        learner.meta_step(optimizer, _batch(seed), epoch)


def _assert_dead_still(learner: MAMLpp, dead: list[str], live: list[str]) -> None:
    params = dict(learner.backbone.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    lrs_before = learner.inner_lrs.detach().clone()
    _train(learner)
    rows = [learner.adapted_names.index(n) for n in dead]
    for name, row in zip(dead, rows, strict=True):
        assert torch.equal(params[name], before[name]), f"{name} moved"
        assert torch.equal(params[name].grad, torch.zeros_like(params[name])), name
        assert torch.equal(learner.inner_lrs[row], lrs_before[row]), f"rates of {name} moved"
    for name in live:
        assert not torch.equal(params[name], before[name]), f"{name} did not train"
    # The inner loop leaves a dead bias exactly where it was.
    sx, sy, _, _ = _batch(9)
    fast = learner.adapt(sx, sy)
    for name in dead:
        assert torch.equal(fast[name], params[name].detach().expand_as(fast[name])), name


@pytest.mark.parametrize("execution", ["batched", "loop"])
@pytest.mark.slow
def test_conv_biases_before_batch_norm_stay_exactly_still_in_conv4(execution):
    torch.manual_seed(0)
    learner = MAMLpp(Conv4(3, in_channels=1, channels=3, image_size=16), CONFIG, execution)
    with torch.no_grad():  # non-zero biases, so that "still" is not "zero"
        for b in range(4):
            getattr(learner.backbone, f"conv{b}").bias.uniform_(-0.5, 0.5)
    dead = [f"conv{b}.bias" for b in range(4)]
    _assert_dead_still(learner, dead, ["conv0.weight", "conv3.weight", "head.bias"])
    assert list(learner.dead_names) == dead


@pytest.mark.slow
def test_dead_biases_are_detected_in_any_sequential():
    torch.manual_seed(0)
    learner = MAMLpp(conv4_sequential(3, 1, 3, 16), CONFIG)
    dead = [f"module.{4 * b}.bias" for b in range(4)]
    _assert_dead_still(learner, dead, ["module.0.weight", "module.17.bias"])
    assert list(learner.dead_names) == dead


def test_what_counts_as_dead_in_a_module():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16 * 16, 8),  # -> BatchNorm1d on [n, 8]: dead
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 8),  # -> ReLU -> BatchNorm1d: live
        nn.ReLU(),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),  # the head: live
    )
    learner = MAMLpp(mlp, CONFIG)
    _assert_dead_still(learner, ["module.1.bias"], ["module.4.bias", "module.7.bias"])
    assert ModuleBackbone(mlp).dead_names() == ["module.1.bias"]
    # A frozen dead bias is not trained anyway: nothing to silence.
    mlp[1].bias.requires_grad_(False)
    assert MAMLpp(mlp, CONFIG).dead_names == ()


def test_a_linear_bias_before_batch_norm_on_sequences_is_not_taken_as_dead():
    """``Linear`` on ``[n, L, F]`` adds its bias along F, which ``BatchNorm1d`` on ``[n, L, F]``
    normalises over: that bias is live. The backbone refuses to run rather than silence it."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(16, 3))
    learner = MAMLpp(model, MetaConfig(num_inner_steps=1))
    x = torch.randn(2, 6, 4, 4)
    y = torch.arange(3).repeat(2, 2)
    with pytest.raises(
        ConfigError, match=r"BN layer module\.1 .* module\.0 \(Linear\), whose bias"
    ):
        learner.meta_loss(TaskBatch(x, y, x, y))


def test_a_dead_bias_is_adapted_in_per_step_evaluation():
    """Evaluation with stored statistics (``bn_mode="per_step"``) makes the bias live: its
    inner gradient is not silenced there."""
    torch.manual_seed(0)
    config = MetaConfig(num_inner_steps=2, bn_mode="per_step")
    learner = MAMLpp(Conv4(3, in_channels=1, channels=3, image_size=16), config)
    sx, sy, _, _ = _batch(3)
    fast = learner.adapt(sx, sy)
    stored = learner.backbone.conv1.bias.detach()
    assert not torch.equal(fast["conv1.bias"], stored.expand_as(fast["conv1.bias"]))
