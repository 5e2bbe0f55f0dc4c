"""ResNet-18 for 32x32 images (He et al. 2016): a 3x3 stem and no max-pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.models.layers import conv1x1, conv3x3, global_pool, init_cifar_weights, residual_stages
from energyat_core.options import option


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, plus a (projected) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem conv-BN-ReLU, four stages of basic blocks, average pool, linear."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width * 2**i for i in range(len(num_blocks))]
        self.layer1, self.layer2, self.layer3, self.layer4 = residual_stages(BasicBlock, width, planes, num_blocks)
        self.linear = nn.Linear(planes[-1], num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 8 * width)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return global_pool(self.layer4(self.layer3(self.layer2(self.layer1(out)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@dataclass
class ResNet18Config:
    """The options of both ResNet-18 backbones (``resnet18`` and ``preact_resnet18``)."""

    width: int = option(64, "channels of the first stage (doubled at each of the 3 later stages)", ge=1)
    in_channels: int = option(3, "input image channels", ge=1)


class ResNet18(Backbone):
    """ResNet-18 for CIFAR-sized images: 3x3 stem, no max-pool (11.2M parameters at width 64).

    Post-activation basic blocks in four stages of two blocks each, with width, 2x, 4x
    and 8x width channels, then global average pooling and a linear classifier.
    """

    Config = ResNet18Config

    def build(self, num_classes: int) -> nn.Module:
        return CifarResNet((2, 2, 2, 2), num_classes, self.config.width, self.config.in_channels)
