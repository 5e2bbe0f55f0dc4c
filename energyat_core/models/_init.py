"""Weight initialisation shared by the CIFAR backbones."""

from __future__ import annotations

from torch import nn


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


def check_positive(name: str, value: int) -> None:
    """Raise ``ValueError`` (a config error to the user) unless ``value`` is a positive int."""
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
