"""Hook implementations of the energyat-pgd plugin (entry point ``pgd``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_pgd.attacks import FGSM, FGSMRS, PGD


@hookimpl
def register_attacks(register):
    """Register the ``pgd``, ``fgsm`` and ``fgsm-rs`` attacks."""
    register("pgd", PGD)
    register("fgsm", FGSM)
    register("fgsm-rs", FGSMRS)


PGD_AT = Method(
    name="pgd-at",
    help=(
        "PGD adversarial training (Madry et al. 2018): CE on x_adv from 10 steps of 2/255 in the 8/255 L-inf ball. "
        "Schedule (chosen default, the paper leaves it open): SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, "
        "100 epochs, lr x0.1 at 50% and 75% of training, the fractions of Rice et al. 2020's piecewise schedule "
        "(200 epochs, decays at 100 and 150)"
    ),
    parts={
        "attack": (
            "pgd",
            {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "objective": "ce", "random_start": "uniform"},
        ),
        "loss": ("ce", {}),
        "weighter": ("uniform", {}),
    },
    settings={
        "epochs": 100,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "schedule": "multistep",
        "milestones": (0.5, 0.75),
        "gamma": 0.1,
    },
    reference=(
        "Madry et al. 2018 (ICLR), CIFAR-10, eps 8/255, wide ResNet: 87.3% clean, 45.8% against white-box PGD-20"
    ),
)

#: PGD-AT with Wong et al.'s single-step attack and short cyclic schedule; optimiser as PGD-AT
FGSM_RS = Method(
    name="fgsm-rs",
    help=(
        "Fast adversarial training (Wong et al. 2020, 'Fast is better than free'): CE on x_adv from FGSM with "
        "random start U(-eps,eps) and step 1.25*eps; 15 epochs, cyclic lr 0 -> 0.2 (at 2/5 of training) -> 0"
    ),
    based_on="pgd-at",
    parts={"attack": ("fgsm-rs", {})},
    settings={"epochs": 15, "lr": 0.2, "schedule": "cyclic", "warmup": 0.4},
    reference="Wong et al. 2020: 46% PGD-50 on PreActResNet-18 (CIFAR-10, eps 8/255), 12 min on one 2080 Ti",
)


@hookimpl
def register_methods(register):
    """Register the ``pgd-at`` and ``fgsm-rs`` presets."""
    register(PGD_AT)
    register(FGSM_RS)
