"""The generator G of FGSM-SDI: a small fully convolutional network that proposes ``delta0``.

Architecture (methods.md, FGSM-SDI), for images with ``C`` channels (``C = 3``: 6 inputs):

* input ``[x, sign(grad_x CE(f(x), y))]``, ``2C`` channels at full resolution;
* conv3x3 ``2C -> w`` (no bias), BatchNorm, ReLU;
* one residual block ``w -> w``: ``h + conv(relu(bn(conv(relu(bn(h))))))`` with 3x3 convs and
  BatchNorm without affine parameters (pre-activation, identity shortcut);
* BatchNorm without affine parameters, conv3x3 ``w -> C`` (with bias);
* ``tanh(.) * eps``, so every output lies strictly inside the L-inf ball of radius ``eps``.

``w = 64`` by default. The network keeps the spatial size (all convolutions are 3x3 with
padding 1), so it works for any image size.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Pre-activation residual block with two 3x3 convolutions and affine-free BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels, affine=False)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels, affine=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h + conv(relu(bn(conv(relu(bn(h))))))``."""
        r = self.conv1(torch.relu(self.bn1(h)))
        r = self.conv2(torch.relu(self.bn2(r)))
        return h + r


class Generator(nn.Module):
    """FGSM-SDI's initialisation generator: ``G([x, sign g]) = tanh(net([x, sign g])) * eps``."""

    def __init__(self, eps: float, image_channels: int = 3, channels: int = 64) -> None:
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        if image_channels < 1 or channels < 1:
            raise ValueError("image_channels and channels must be at least 1")
        self.eps = float(eps)
        self.image_channels = image_channels
        self.stem = nn.Sequential(
            nn.Conv2d(2 * image_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.block = ResidualBlock(channels)
        self.head_bn = nn.BatchNorm2d(channels, affine=False)
        self.head = nn.Conv2d(channels, image_channels, 3, padding=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs``: ``[x, sign g]`` concatenated on the channel axis -> ``delta0`` in (-eps, eps)."""
        if inputs.dim() != 4 or inputs.shape[1] != 2 * self.image_channels:
            raise ValueError(
                f"the generator expects [N, {2 * self.image_channels}, H, W] inputs ([x, sign g]), "
                f"got {tuple(inputs.shape)}"
            )
        h = self.block(self.stem(inputs))
        return torch.tanh(self.head(self.head_bn(h))) * self.eps
