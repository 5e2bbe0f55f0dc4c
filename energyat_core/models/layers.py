"""The building blocks the CIFAR backbones share: convolutions, residual stages, pooling, initialisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution without bias, padded to keep the size (at stride 1): also the CIFAR stem."""
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution without bias: the projection of a shortcut whose shape changes."""
    return nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)


def residual_stages(
    block: Callable[[int, int, int], nn.Module], in_planes: int, planes: Sequence[int], depths: Sequence[int]
) -> list[nn.Sequential]:
    """Stage ``i`` holds ``depths[i]`` blocks ``block(in_planes, planes[i], stride)`` of ``planes[i]`` channels.

    The first block of every stage after the first has stride 2 (halving the image size).
    """
    stages = []
    for i, (width, n) in enumerate(zip(planes, depths, strict=True)):
        blocks = []
        for j in range(n):
            blocks.append(block(in_planes, width, 2 if (i > 0 and j == 0) else 1))
            in_planes = width
        stages.append(nn.Sequential(*blocks))
    return stages


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling: (N, C, H, W) -> (N, C)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def init_cifar_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU), unit/zero BatchNorm, zero linear biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
