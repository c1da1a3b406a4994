"""ResNet-12 through the generic path: architecture, a meta-iteration with per-step BN rows,
and its presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlpp import MAMLpp, MetaConfig, ModuleBackbone, ResNet12, TaskBatch
from mamlpp.nn.resnet12 import resnet12_widths
from mamlpp.run.build import build_learner
from mamlpp.run.experiment import build_config, config_differences
from mamlpp.run.presets import resolve_config


def test_standard_architecture_shapes_and_size():
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        net = ResNet12(5)
        features = net.blocks(torch.empty(2, 3, 84, 84))
        logits = net(torch.empty(2, 3, 84, 84))
    assert features.shape == (2, 640, 5, 5) and logits.shape == (2, 5)
    assert resnet12_widths(64) == (64, 160, 320, 640)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 16  # 4 blocks x (three 3x3 + one 1x1 shortcut)
    assert all(c.bias is None for c in convs)
    assert sum(c.weight.numel() for c in convs) == 12_414_848  # the usual "12.4M" ResNet-12


@pytest.mark.slow
def test_tiny_resnet12_meta_loss_backward_and_per_step_bn_rows():
    config = MetaConfig(num_inner_steps=2, first_order_epochs=0)  # all six on, second order
    torch.manual_seed(0)
    learner = MAMLpp(ResNet12(3, in_channels=3, widths=(4, 6, 8, 10)), config).double()
    backbone = learner.backbone
    assert isinstance(backbone, ModuleBackbone)
    layers = backbone.bn_layers()
    assert len(layers) == 16
    for layer in layers.values():
        assert layer.weight.shape == layer.bias.shape == (2, layer.weight.shape[1])
        assert layer.running_mean.shape == layer.running_var.shape == layer.weight.shape
    # Adapted: the 16 convolutions and the head; never BN gamma/beta.
    assert len(learner.adapted_names) == 18
    assert not any(".bn" in n or "shortcut.1" in n for n in learner.adapted_names)
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(2, 6, 3, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.randn(2, 6, 3, 16, 16, generator=g, dtype=torch.float64)
    sy = qy = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    before = {n: b.clone() for n, b in backbone.named_buffers()}
    loss, metrics = learner.meta_loss(TaskBatch(sx, sy, qx, qy), 0)
    loss.backward()
    assert torch.isfinite(loss) and metrics["step_losses"].shape == (2,)
    for name, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    # Every row of every layer's running statistics moved (row i: the passes of step i).
    for name, value in backbone.named_buffers():
        assert ((value - before[name]).abs().amax(dim=1) > 0).all(), name


def test_every_natural_image_benchmark_has_resnet12_presets():
    for base in ("mini-imagenet", "cifar-fs", "fc100", "tiered-imagenet"):
        for shots in (1, 5):
            conv4 = resolve_config(f"{base}-5w{shots}s").to_dict()
            resnet = resolve_config(f"{base}-5w{shots}s-resnet12").to_dict()
            assert resnet["model"] == {"backbone": "resnet12", "channels": 64}
            assert {k: v for k, v in resnet.items() if k not in ("model", "preset")} == {
                k: v for k, v in conv4.items() if k not in ("model", "preset")
            }


def test_resnet12_presets_build_the_generic_learner():
    for shots in (1, 5):
        config = resolve_config(f"mini-imagenet-5w{shots}s-resnet12")
        conv4 = resolve_config(f"mini-imagenet-5w{shots}s")
        assert (config.model.backbone, config.model.channels) == ("resnet12", 64)
        assert conv4.model.backbone == "conv4"
        for section in ("data", "meta", "train", "eval"):
            assert getattr(config, section) == getattr(conv4, section)
    small = resolve_config("mini-imagenet-5w1s-resnet12", overrides=["model.channels=2"])
    learner = build_learner(small, in_channels=3)
    assert isinstance(learner.backbone.module, ResNet12)
    assert learner.backbone.module.head.in_features == 20  # widths 2-5-10-20
    for layer in learner.backbone.bn_layers().values():
        assert layer.weight.shape[0] == layer.running_mean.shape[0] == 5  # num_inner_steps


def test_a_run_saved_before_model_backbone_existed_still_resumes():
    new = build_config({"model": {"channels": 32}}).to_dict()
    old = {**new, "model": {"channels": 32}}  # no "backbone" key: read as the default conv4
    assert config_differences(old, new) == []
    resnet = build_config({"model": {"backbone": "resnet12", "channels": 32}}).to_dict()
    assert config_differences(old, resnet) == ["model.backbone"]
