"""Registers the attack ``noise``, the weighter ``focal`` and the presets ``noise-at`` and ``noise-focal``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energyat_core.api import Attack, Batch, Method, Weighter, hookimpl, option


class UniformNoise(Attack):
    """Random uniform noise in the run's L-inf ball, scaled (a baseline: no gradient, one draw per sample)."""

    #: uniform noise in a box: an L-inf construction
    norms = ("linf",)

    @dataclass
    class Config:
        scale: float = option(1.0, "noise amplitude as a fraction of the run's eps", gt=0, le=1)

    def perturb(self, model, x, y):
        radius = self.config.scale * self.threat.eps
        noise = torch.empty_like(x).uniform_(-radius, radius)
        return (x + noise).clamp(0, 1)


class Focal(Weighter):
    """Weights ``(1 - p_y(x_adv))**gamma``, rescaled to mean 1: hard samples count more."""

    @dataclass
    class Config:
        gamma: float = option(2.0, "focusing exponent; 0 gives uniform weights", ge=0)

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


#: a preset of this plugin's parts and core's loss
NOISE_AT = Method(
    name="noise-at",
    help="Training on inputs with uniform noise in the 8/255 ball (an example preset)",
    parts={"attack": ("noise", {"scale": 1.0}), "loss": ("ce", {})},
    settings={"epochs": 3, "lr": 0.05, "schedule": "cosine"},
)

#: a preset that extends another one instead of restating it
NOISE_FOCAL = Method(
    name="noise-focal",
    help="noise-at with focal weights (an example of based_on)",
    based_on="noise-at",
    parts={"weighter": ("focal", {"gamma": 1.0})},
    settings={"epochs": 2},
)


@hookimpl
def register_methods(register):
    register(NOISE_AT)
    register(NOISE_FOCAL)
