"""Core's own components: no attack, cross-entropy, uniform weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from energyat_core.components import Attack, Batch, Loss, Weighter
from energyat_core.config import option


class NoAttack(Attack):
    """No attack: x_adv = x (standard training)."""

    def perturb(self, model, x, y):
        return x


class CrossEntropy(Loss):
    """Cross-entropy on the adversarial (default) or clean inputs, with optional label smoothing."""

    @dataclass
    class Config:
        on: Literal["adv", "clean"] = option("adv", "which inputs the loss is computed on")
        label_smoothing: float = option(0.0, "label smoothing in [0, 1) (FGSM-SDI uses 0.5)")

        def __post_init__(self):
            if not 0.0 <= self.label_smoothing < 1.0:
                raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def __call__(self, batch: Batch) -> torch.Tensor:
        logits = batch.logits_adv if self.config.on == "adv" else batch.logits_clean
        return F.cross_entropy(logits.float(), batch.y, reduction="none", label_smoothing=self.config.label_smoothing)


class Uniform(Weighter):
    """Every sample counts the same (weight 1)."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        return torch.ones(batch.y.shape[0], device=batch.y.device)
