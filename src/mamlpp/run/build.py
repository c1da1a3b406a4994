"""Building what a run needs from its config: the device and the MAML++ learner."""

from __future__ import annotations

import torch

from mamlpp.core.learner import MAMLpp
from mamlpp.errors import ConfigError
from mamlpp.nn.conv4 import Conv4, conv4_for
from mamlpp.nn.resnet12 import ResNet12, resnet12_widths
from mamlpp.run.experiment import ExperimentConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def build_learner(
    config: ExperimentConfig, in_channels: int, device: torch.device | str = "cpu"
) -> MAMLpp:
    """The MAML++ learner of ``config`` (conv4 or ResNet-12), initialised from ``train.seed``."""
    torch.manual_seed(config.train.seed)
    backbone: ResNet12 | Conv4
    if config.model.backbone == "resnet12":
        # A plain module: MAMLpp gives its BN layers the config's per-step tables.
        widths = resnet12_widths(config.model.channels)
        backbone = ResNet12(config.data.ways, in_channels, widths)
    else:
        backbone = conv4_for(
            config.data.ways, in_channels, config.data.image_size, channels=config.model.channels
        )
    return MAMLpp(backbone, config.meta).to(device)
