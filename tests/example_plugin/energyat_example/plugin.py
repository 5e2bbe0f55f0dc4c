"""Registers the attack ``noise`` and the weighter ``focal``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energyat_core import hookimpl
from energyat_core.components import Attack, Batch, Weighter
from energyat_core.config import option


class UniformNoise(Attack):
    """Random uniform noise in the L-inf ball (a baseline: no gradient, one draw per sample)."""

    @dataclass
    class Config:
        eps: float = option(8 / 255, "L-inf radius of the noise")

    def perturb(self, model, x, y):
        noise = torch.empty_like(x).uniform_(-self.config.eps, self.config.eps)
        return (x + noise).clamp(0, 1)


class Focal(Weighter):
    """Weights ``(1 - p_y(x_adv))**gamma``, rescaled to mean 1: hard samples count more."""

    @dataclass
    class Config:
        gamma: float = option(2.0, "focusing exponent; 0 gives uniform weights")

    def __call__(self, batch: Batch) -> torch.Tensor:
        p_y = batch.logits_adv.detach().float().softmax(1).gather(1, batch.y[:, None]).squeeze(1)
        w = (1 - p_y).clamp_min(1e-6) ** self.config.gamma
        return w / w.mean()


@hookimpl
def register_attacks(register):
    register("noise", UniformNoise)


@hookimpl
def register_weighters(register):
    register("focal", Focal)
