"""Frozen tensors stay frozen: ``requires_grad=False`` on a tensor of the network means that
neither the inner loop nor the outer loop changes it, it has no inner learning rates, and a frozen
batch-norm layer keeps its shared ``(C,)`` gamma and beta (no per-step rows).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from core_helpers import tiny_tasks
from torch import nn

from mamlpp import Conv4, MAMLpp, MetaConfig

# LSLR, BNWB and BNRS on (the defaults); second order from epoch 1, MSL until epoch 2.
CONFIG = MetaConfig(num_inner_steps=2, first_order_epochs=1, msl_epochs=2, meta_lr=1e-2)
EPOCHS = (0, 0, 1, 1, 2)


def _batch(seed: int) -> list[torch.Tensor]:
    return [t.float() if t.is_floating_point() else t for t in tiny_tasks(seed=seed)]


def _train(learner: MAMLpp, epochs=EPOCHS) -> None:
    optimizer = learner.make_optimizer()
    for seed, epoch in enumerate(epochs):
        learner.meta_step(optimizer, _batch(seed), epoch)


def _frozen_features_model() -> nn.Sequential:
    """A frozen Conv2d + BatchNorm2d feature block (with non-default BN values, as a
    pretrained block has), then a trainable conv block and linear head."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.01))
    with torch.no_grad():
        features[1].weight.uniform_(0.5, 1.5)
        features[1].bias.uniform_(-0.3, 0.3)
    features.requires_grad_(False)
    return nn.Sequential(
        OrderedDict(
            features=features,
            pool=nn.MaxPool2d(4),
            block=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            flatten=nn.Flatten(),
            head=nn.Linear(4 * 4 * 4, 3),
        )
    )


@pytest.mark.slow
def test_frozen_tensors_are_neither_adapted_nor_trained():
    learner = MAMLpp(_frozen_features_model(), CONFIG)
    params = dict(learner.backbone.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert frozen == [
        "module.features.0.weight",
        "module.features.0.bias",
        "module.features.1.weight",
        "module.features.1.bias",
    ]
    before = {n: p.detach().clone() for n, p in params.items()}
    _train(learner)
    for name in frozen:
        assert torch.equal(params[name], before[name]), f"{name} changed"
    trainable = [n for n in params if n not in frozen]
    for name in trainable:
        if name != "module.block.0.bias":  # dead: followed by batch norm
            assert not torch.equal(params[name], before[name]), f"{name} did not train"
    # Not adapted (no LSLR row), not trained by the outer optimiser.
    assert not set(frozen) & set(learner.adapted_names)
    assert learner.inner_lrs.shape == (len(learner.adapted_names), CONFIG.num_inner_steps)
    meta = {id(p) for p in learner.meta_parameters()}
    assert not any(id(params[n]) in meta for n in frozen)
    optimised = {id(p) for g in learner.make_optimizer().param_groups for p in g["params"]}
    assert not any(id(params[n]) in optimised for n in frozen)
    # The fast weights of an adapted task hold no frozen tensor.
    sx, sy, _, _ = _batch(9)
    assert not set(frozen) & set(learner.adapt(sx, sy))


def test_a_frozen_batch_norm_keeps_its_shared_gamma_and_beta():
    model = _frozen_features_model()
    learner = MAMLpp(model, CONFIG)
    frozen_bn = learner.backbone.bn_layers()["module.features.1"]
    assert frozen_bn.weight.shape == frozen_bn.bias.shape == (4,)  # not made per step
    assert not frozen_bn.weight.requires_grad and not frozen_bn.bias.requires_grad
    assert torch.equal(frozen_bn.weight, model.features[1].weight)
    assert torch.equal(frozen_bn.bias, model.features[1].bias)
    # Its running statistics are still collected per step (documented in docs/algorithm.md).
    assert frozen_bn.running_mean.shape == (CONFIG.num_inner_steps, 4)
    # The trainable layer gets its per-step rows (BNWB).
    trainable_bn = learner.backbone.bn_layers()["module.block.1"]
    assert trainable_bn.weight.shape == (CONFIG.num_inner_steps, 4)
    # A state dict round-trips into a learner built the same way.
    twin = MAMLpp(_frozen_features_model(), CONFIG)
    twin.load_state_dict(learner.state_dict())


def test_frozen_parameters_of_a_builtin_conv4_and_with_adapted_batch_norm():
    torch.manual_seed(0)
    backbone = Conv4(3, in_channels=1, channels=3, image_size=16)
    backbone.conv0.requires_grad_(False)
    backbone.bn0.requires_grad_(False)
    config = MetaConfig(
        num_inner_steps=2, per_step_bn_affine=False, adapt_bn_affine=True, meta_lr=1e-2
    )
    learner = MAMLpp(backbone, config)
    assert not {"conv0.weight", "conv0.bias", "bn0.weight", "bn0.bias"} & set(learner.adapted_names)
    assert "bn1.weight" in learner.adapted_names
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    _train(learner, (0, 0, 1))
    params = dict(backbone.named_parameters())
    for name in ("conv0.weight", "conv0.bias", "bn0.weight", "bn0.bias"):
        assert torch.equal(params[name], before[name]), name
    assert not torch.equal(params["conv1.weight"], before["conv1.weight"])
