"""Core's own components and their registration, through the same hooks as any plugin.

Components: attack ``none`` (standard training), loss ``ce``, weighter ``uniform``,
evaluator ``pgd``, the CIFAR backbones and ``timm``, and the built-in datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from energyat_core.components import Attack, Batch, Loss, Weighter
from energyat_core.divergence import smoothed_cross_entropy
from energyat_core.hookspecs import hookimpl
from energyat_core.options import option


class NoAttack(Attack):
    """No attack: x_adv = x (standard training)."""

    def perturb(self, model, x, y):
        return x


class CrossEntropy(Loss):
    """Cross-entropy on the adversarial (default) or clean inputs, with optional label smoothing."""

    @dataclass
    class Config:
        on: Literal["adv", "clean"] = option("adv", "which inputs the loss is computed on")
        smoothing: float = option(
            0.0,
            "label smoothing: the true class keeps 1 - smoothing, the K-1 others share smoothing evenly "
            "(FGSM-SDI's code, --factor 0.9: 0.1)",
            ge=0,
            lt=1,
        )

    def __call__(self, batch: Batch) -> torch.Tensor:
        logits = batch.logits_adv if self.config.on == "adv" else batch.logits_clean
        return smoothed_cross_entropy(logits, batch.y, self.config.smoothing)


class Uniform(Weighter):
    """Every sample counts the same (weight 1)."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        return torch.ones(batch.y.shape[0], device=batch.y.device)


@hookimpl
def register_attacks(register):
    register("none", NoAttack)


@hookimpl
def register_losses(register):
    register("ce", CrossEntropy)


@hookimpl
def register_weighters(register):
    register("uniform", Uniform)


@hookimpl
def register_evaluators(register):
    from energyat_core.evaluation import PGDEvaluator

    register("pgd", PGDEvaluator)


@hookimpl
def register_backbones(register):
    from energyat_core import models

    backbones = {
        "preact_resnet18": models.PreActResNet18,
        "resnet18": models.ResNet18,
        "wrn28_10": models.WideResNet28x10,
        "wrn34_10": models.WideResNet34x10,
        "small_cnn": models.SmallCNN,
        "timm": models.TimmBackbone,
    }
    for name, cls in backbones.items():
        register(name, cls)


@hookimpl
def register_datasets(register):
    from energyat_core import data

    datasets = {
        "synthetic": data.Synthetic,
        "cifar10": data.CIFAR10,
        "cifar100": data.CIFAR100,
        "svhn": data.SVHN,
        "imagefolder": data.ImageFolder,
    }
    for name, cls in datasets.items():
        register(name, cls)
