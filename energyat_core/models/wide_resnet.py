"""Wide residual networks for 32x32 images (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.models.layers import conv3x3, global_pool, init_cifar_weights, residual_stages
from energyat_core.models.preact_resnet import PreActBlock
from energyat_core.options import option

DEPTH_HELP = "number of layers; must be 6n+4 (16, 22, 28, 34, 40, ...)"


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem of 16 channels, three stages of 16k, 32k and 64k channels.

    Each stage has ``(depth - 4) / 6`` pre-activation blocks (with ``dropout`` between
    their two convolutions); the last two stages start with stride 2. A final BN+ReLU,
    global average pooling and a linear layer give the logits.
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
        planes = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(in_channels, 16)
        block = partial(PreActBlock, dropout=dropout)
        self.block1, self.block2, self.block3 = residual_stages(block, 16, planes, [n] * 3)
        self.bn = nn.BatchNorm2d(planes[-1])
        self.fc = nn.Linear(planes[-1], num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 64 * widen_factor)."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return global_pool(torch.relu(self.bn(out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def check_wrn_depth(depth: int) -> None:
    """Raise ``ValueError`` unless ``depth`` is 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28, 34, 40), got {depth}")


@dataclass
class WideResNetConfig:
    """The options of the WideResNet backbones; each backbone changes the default depth."""

    depth: int = option(28, DEPTH_HELP, ge=10)
    widen_factor: int = option(10, "channel multiplier k of the three stages (16k, 32k, 64k)", ge=1)
    dropout: float = option(0.0, "dropout probability between the two convolutions of a block", ge=0, lt=1)
    in_channels: int = option(3, "input image channels", ge=1)

    def check(self) -> None:
        check_wrn_depth(self.depth)


class WideResNetBackbone(Backbone):
    """Builds a :class:`WideResNet` from a :class:`WideResNetConfig`; the registered backbones differ in defaults."""

    Config = WideResNetConfig

    def build(self, num_classes: int) -> nn.Module:
        c = self.config
        return WideResNet(c.depth, c.widen_factor, num_classes, c.dropout, c.in_channels)


class WideResNet28x10(WideResNetBackbone):
    """WideResNet-28-10 for CIFAR-sized images (36.5M parameters).

    Zagoruyko & Komodakis' pre-activation wide residual network; depth, width and dropout
    can be changed through the options.
    """


class WideResNet34x10(WideResNetBackbone):
    """WideResNet-34-10 for CIFAR-sized images (46.2M parameters), the usual robustness benchmark.

    Zagoruyko & Komodakis' pre-activation wide residual network; depth, width and dropout
    can be changed through the options.
    """

    @dataclass
    class Config(WideResNetConfig):
        depth: int = option(34, DEPTH_HELP, ge=10)
