"""Pre-activation ResNet-18 for 32x32 images (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""

from __future__ import annotations

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.models.layers import conv1x1, conv3x3, global_pool, init_cifar_weights, residual_stages
from energyat_core.models.resnet import ResNet18Config


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the identity.

    When the shape changes the shortcut is a 1x1 convolution of the pre-activated input.
    ``dropout`` > 0 (the wide residual networks' option) drops activations between the
    two convolutions.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = conv1x1(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + identity


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet: 3x3 stem, four stages, final BN+ReLU, average pool, linear."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width)
        planes = [width * 2**i for i in range(len(num_blocks))]
        self.layer1, self.layer2, self.layer3, self.layer4 = residual_stages(PreActBlock, width, planes, num_blocks)
        self.bn = nn.BatchNorm2d(planes[-1])
        self.linear = nn.Linear(planes[-1], num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 8 * width)."""
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return global_pool(torch.relu(self.bn(out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class PreActResNet18(Backbone):
    """Pre-activation ResNet-18 for CIFAR-sized images (11.2M parameters at width 64).

    3x3 stem convolution, four stages of two pre-activation blocks with
    width, 2x, 4x and 8x width channels, a final BatchNorm+ReLU, global average pooling
    and a linear classifier: the network most adversarial-training papers report on.
    """

    Config = ResNet18Config

    def build(self, num_classes: int) -> nn.Module:
        return PreActResNet((2, 2, 2, 2), num_classes, self.config.width, self.config.in_channels)
