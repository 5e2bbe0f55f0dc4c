"""The built-in backbones and the :class:`Classifier` wrapper every model is trained as.

Registered names (see ``energyat_core.core_plugin``): ``preact_resnet18``,
``resnet18``, ``wrn28_10``, ``wrn34_10``, ``small_cnn`` and ``timm`` (``timm:<name>``).
:mod:`~energyat_core.models.normalization` resolves ``--normalize``; :mod:`~energyat_core.models.stem`
adapts timm stems to small images and :mod:`~energyat_core.models.pretrained` loads local
pretrained files into timm models (docs/models.md).
"""

from __future__ import annotations

from energyat_core.models.classifier import Classifier, build_classifier
from energyat_core.models.preact_resnet import PreActResNet, PreActResNet18
from energyat_core.models.resnet import CifarResNet, ResNet18
from energyat_core.models.small_cnn import SmallCNN, SmallConvNet
from energyat_core.models.timm_backbone import TimmBackbone
from energyat_core.models.wide_resnet import WideResNet, WideResNet28x10, WideResNet34x10

__all__ = [
    "Classifier",
    "build_classifier",
    "PreActResNet18",
    "ResNet18",
    "WideResNet28x10",
    "WideResNet34x10",
    "SmallCNN",
    "TimmBackbone",
    "PreActResNet",
    "CifarResNet",
    "WideResNet",
    "SmallConvNet",
]
