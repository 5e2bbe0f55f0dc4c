"""energyat's own components, registered through the same hooks as any plugin."""

from __future__ import annotations

from energyat_core.hookspecs import hookimpl


@hookimpl
def register_attacks(register):
    from energyat_core.builtins import NoAttack

    register("none", NoAttack)


@hookimpl
def register_losses(register):
    from energyat_core.builtins import CrossEntropy

    register("ce", CrossEntropy)


@hookimpl
def register_weighters(register):
    from energyat_core.builtins import Uniform

    register("uniform", Uniform)


@hookimpl
def register_evaluators(register):
    from energyat_core.evaluation import PGDEvaluator

    register("pgd", PGDEvaluator)


@hookimpl
def register_backbones(register):
    from energyat_core import models

    register("preact_resnet18", models.PreActResNet18)
    register("resnet18", models.ResNet18)
    register("wrn28_10", models.WideResNet28x10)
    register("wrn34_10", models.WideResNet34x10)
    register("small_cnn", models.SmallCNN)
    register("timm", models.TimmBackbone)


@hookimpl
def register_datasets(register):
    from energyat_core import data

    register("synthetic", data.Synthetic)
    register("cifar10", data.CIFAR10)
    register("cifar100", data.CIFAR100)
    register("svhn", data.SVHN)
    register("imagefolder", data.ImageFolder)
