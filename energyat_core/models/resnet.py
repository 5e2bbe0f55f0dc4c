"""ResNet-18 for 32x32 images (He et al. 2016): a 3x3 stem and no max-pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.options import option
from energyat_core.models._init import check_positive, init_cifar_weights


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, plus a (projected) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem conv-BN-ReLU, four stages of basic blocks, average pool, linear."""

    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 8 * width)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class ResNet18(Backbone):
    """ResNet-18 for CIFAR-sized images: 3x3 stem, no max-pool (11.2M parameters at width 64).

    Post-activation basic blocks in four stages of two blocks each, with width, 2x, 4x
    and 8x width channels, then global average pooling and a linear classifier.
    """

    @dataclass
    class Config:
        width: int = option(64, "channels of the first stage (doubled at each of the 3 later stages)")
        in_channels: int = option(3, "input image channels")

        def __post_init__(self) -> None:
            check_positive("width", self.width)
            check_positive("in_channels", self.in_channels)

    def build(self, num_classes: int) -> nn.Module:
        return CifarResNet((2, 2, 2, 2), num_classes, self.config.width, self.config.in_channels)
