"""A tiny convolutional network for tests and CPU smoke runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from energyat_core.components import Backbone
from energyat_core.models.layers import global_pool, init_cifar_weights
from energyat_core.options import option


class SmallConvNet(nn.Module):
    """Three stride-2 conv-BN-ReLU layers (w, 2w, 4w channels), global average pool, linear.

    A 32x32 input is reduced to 16x16, 8x8 and 4x4: a forward and backward pass of 128
    CIFAR-sized images takes about 10 ms on two CPU cores.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3, batchnorm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, width), (width, 2 * width), (2 * width, 4 * width)):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=not batchnorm))
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()] if batchnorm else [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(4 * width, num_classes)
        init_cifar_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features, shape (N, 4 * width)."""
        return global_pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class SmallCNN(Backbone):
    """A tiny 3-layer CNN with BatchNorm for tests and CPU smoke runs (about 25k parameters).

    Takes any image size (global average pooling). Not meant for reported results.
    """

    @dataclass
    class Config:
        width: int = option(16, "channels of the first layer (2x and 4x in the next two)", ge=1)
        in_channels: int = option(3, "input image channels", ge=1)
        batchnorm: bool = option(True, "BatchNorm after each conv (off: samples independent, for exact DDP checks)")

    def build(self, num_classes: int) -> nn.Module:
        return SmallConvNet(num_classes, self.config.width, self.config.in_channels, self.config.batchnorm)
