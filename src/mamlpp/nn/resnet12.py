"""ResNet-12, the standard few-shot backbone (Oreshkin et al. 2018, Lee et al. 2019), as a plain
module: :class:`~mamlpp.nn.module_backbone.ModuleBackbone` (what ``MAMLpp(ResNet12(...), config)``
uses) gives its batch-norm layers per-step rows and runs it over tasks.

Four residual blocks, each: three 3x3 convolutions (no bias, padding 1), each followed by batch
norm and a leaky ReLU of slope 0.1 (the third activation after the residual sum), a 1x1
convolution + batch norm on the shortcut, then a 2x2 max-pool. Then a global average pool and a
linear head to ``ways``. Widths 64-160-320-640 by default; on 84x84 inputs the feature maps are
42, 21, 10 and 5 pixels wide, the features 640 numbers. DropBlock, which the supervised
pre-training literature adds, is left out: randomness would differ between the inner and outer
passes of MAML.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

STANDARD_WIDTHS = (64, 160, 320, 640)
SLOPE = 0.1  # leaky ReLU slope of the ResNet-12 literature


def resnet12_widths(first: int) -> tuple[int, int, int, int]:
    """Widths that keep the standard 1 : 2.5 : 5 : 10 ratios: 64 -> (64, 160, 320, 640)."""

    def width(ratio: float) -> int:
        return max(1, round(first * ratio))

    return width(1), width(2.5), width(5), width(10)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """``[n, C_in, H, W]`` -> ``[n, C_out, H/2, W/2]``: three conv-BN-leaky ReLU layers, a
    1x1 conv + BN shortcut, a 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = _conv3x3(out_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.bn1(self.conv1(x)), SLOPE)
        h = F.leaky_relu(self.bn2(self.conv2(h)), SLOPE)
        h = self.bn3(self.conv3(h))
        h = F.leaky_relu(h + self.shortcut(x), SLOPE)
        return F.max_pool2d(h, 2)


class ResNet12(nn.Module):
    """ResNet-12 for ``ways``-way classification of ``[n, in_channels, H, W]`` images (H, W >=
    16: four halvings). Kaiming-normal convolutions (fan-out, leaky ReLU 0.1), BN gamma 1 and
    beta 0, Xavier-uniform head with zero bias."""

    def __init__(
        self, ways: int, in_channels: int = 3, widths: Sequence[int] = STANDARD_WIDTHS
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if ways < 2:
            raise ValueError(f"ResNet12 needs ways >= 2, got {ways}")
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"ResNet12 needs four positive widths, got {widths}")
        self.ways = ways
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(c_in, c_out)
                for c_in, c_out in zip((in_channels, *widths[:3]), widths, strict=True)
            )
        )
        self.head = nn.Linear(widths[-1], ways)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, a=SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(x).mean(dim=(2, 3))  # global average pool: [n, widths[-1]]
        return self.head(features)


__all__ = ["STANDARD_WIDTHS", "ResNet12", "ResidualBlock", "resnet12_widths"]
