"""Hook implementations of the energyat-weat plugin (entry point ``weat``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_weat.weighter import EnergyWeighter

#: TRADES' preset (energyat-trades) weighted by the clean energy, with WEAT's own schedule
WEAT = Method(
    name="weat",
    help=(
        "Weighted Energy Adversarial Training (Mirza et al., ECCV 2024): the TRADES loss (beta 6) with per-sample "
        "weights 1/softplus(|E(x)|) from the clean marginal energy on both terms; x_adv as TRADES (KL objective, "
        "10 steps of eps/4 (2/255 at 8/255, their --step-size) in the run's eps-ball from x + 0.001*N(0,I)). "
        "Variant 'nat' (CE on x, default); "
        "variant 'adv' (CE on x_adv): --set loss.ce_on=adv. Their schedule: SGD lr 0.1, momentum 0.9, wd 5e-4, "
        "batch 128, 100 epochs, OneCycle (peak 0.1, 25% warm-up, momentum cycled 0.95-0.85-0.95 as torch's "
        "OneCycleLR does) stepped per batch"
    ),
    based_on="trades",
    parts={
        # WEAT's own step (their parser.py --step-size 2/255), not TRADES' 0.007
        "attack": ("pgd", {"step_ratio": 0.25}),
        "loss": ("trades", {"beta": 6.0, "ce_on": "clean"}),
        "weighter": ("energy", {}),
    },
    # TRADES' optimiser (SGD lr 0.1, momentum 0.9, batch 128) with WEAT's epochs, weight decay and OneCycle
    # (torch's OneCycleLR, which their code uses, also cycles SGD momentum 0.95 -> 0.85 -> 0.95 by default)
    settings={
        "epochs": 100,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup": 0.25,
        "momentum_cycle": (0.85, 0.95),
    },
    reference="Mirza et al., ECCV 2024 (arXiv:2407.06315); no reference number is pinned by energyat's specification",
    reference_backbone="resnet18",
)


@hookimpl
def register_weighters(register):
    """Register the ``energy`` weighter."""
    register("energy", EnergyWeighter)


@hookimpl
def register_methods(register):
    """Register the ``weat`` preset."""
    register(WEAT)
