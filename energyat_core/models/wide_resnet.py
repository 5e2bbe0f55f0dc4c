"""Wide residual networks for 32x32 images (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.options import option
from energyat_core.models._init import check_positive, init_cifar_weights


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus the identity.

    When the shape changes the shortcut is a 1x1 convolution of the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem of 16 channels, three stages of 16k, 32k and 64k channels.

    Each stage has ``(depth - 4) / 6`` blocks; the last two stages start with stride 2.
    A final BN+ReLU, global average pooling and a linear layer give the logits.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_wrn_depth(depth)
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for i in range(3):
            blocks = [
                WideBlock(
                    channels[i] if j == 0 else channels[i + 1], channels[i + 1], 2 if (i > 0 and j == 0) else 1, dropout
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 64 * widen_factor)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def check_wrn_depth(depth: int) -> None:
    """Raise ``ValueError`` unless ``depth`` is 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28, 34, 40), got {depth}")


@dataclass
class _WideResNetConfig:
    depth: int = option(28, "number of layers; must be 6n+4 (16, 22, 28, 34, 40, ...)")
    widen_factor: int = option(10, "channel multiplier k of the three stages (16k, 32k, 64k)")
    dropout: float = option(0.0, "dropout probability between the two convolutions of a block")
    in_channels: int = option(3, "input image channels")

    def __post_init__(self) -> None:
        check_wrn_depth(self.depth)
        check_positive("widen_factor", self.widen_factor)
        check_positive("in_channels", self.in_channels)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class _WideResNetBackbone(Backbone):
    """Shared implementation of the WideResNet backbones; subclasses only change defaults."""

    Config = _WideResNetConfig

    def build(self, num_classes: int) -> nn.Module:
        c = self.config
        return WideResNet(c.depth, c.widen_factor, num_classes, c.dropout, c.in_channels)


class WideResNet28x10(_WideResNetBackbone):
    """WideResNet-28-10 for CIFAR-sized images (36.5M parameters).

    Zagoruyko & Komodakis' pre-activation wide residual network; depth, width and dropout
    can be changed through the options.
    """

    @dataclass
    class Config(_WideResNetConfig):
        depth: int = option(28, "number of layers; must be 6n+4 (16, 22, 28, 34, 40, ...)")
        widen_factor: int = option(10, "channel multiplier k of the three stages (16k, 32k, 64k)")


class WideResNet34x10(_WideResNetBackbone):
    """WideResNet-34-10 for CIFAR-sized images (46.2M parameters), the usual robustness benchmark.

    Zagoruyko & Komodakis' pre-activation wide residual network; depth, width and dropout
    can be changed through the options.
    """

    @dataclass
    class Config(_WideResNetConfig):
        depth: int = option(34, "number of layers; must be 6n+4 (16, 22, 28, 34, 40, ...)")
        widen_factor: int = option(10, "channel multiplier k of the three stages (16k, 32k, 64k)")
