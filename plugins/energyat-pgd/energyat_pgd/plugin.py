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
        "PGD adversarial training (Madry et al. 2018): CE on x_adv from 10 steps of eps/4 (2/255 at 8/255) in "
        "the run's eps-ball, uniform start, the model in train mode while the adversary is made (as Madry et al.'s "
        "and Rice et al.'s code). Schedule (chosen default, the paper leaves it open): SGD lr 0.1, momentum 0.9, "
        "wd 5e-4, batch 128, 100 epochs, lr x0.1 at 50% and 75% of training, the fractions of Rice et al. 2020's "
        "piecewise schedule (200 epochs, decays at 100 and 150)"
    ),
    parts={
        "attack": ("pgd", {"step_ratio": 0.25, "steps": 10, "objective": "ce", "random_start": "uniform"}),
        "loss": ("ce", {}),
        "weighter": ("uniform", {}),
    },
    settings={
        "attack_bn": "train",
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
    reference_backbone="wrn34_10",
)

#: PGD-AT with Wong et al.'s single-step attack and short cyclic schedule; optimiser as PGD-AT
FGSM_RS = Method(
    name="fgsm-rs",
    help=(
        "Fast adversarial training (Wong et al. 2020, 'Fast is better than free'): CE on x_adv from FGSM with "
        "random start U(-eps,eps) and step 1.25*eps, the model in train mode while the adversary is made; 15 "
        "epochs, cyclic lr 0 -> 0.2 (at half of training, as their train_fgsm.py) -> 0 with momentum 0.9 -> 0.8 -> 0.9 "
        "(CyclicLR's default); --early-stop keeps the "
        "epoch before a catastrophic overfit, as their --early-stop"
    ),
    based_on="pgd-at",
    parts={"attack": ("fgsm-rs", {"step_ratio": 1.25})},
    # train_fgsm.py: CyclicLR(step_size_up = step_size_down = lr_steps / 2), whose default also cycles
    # momentum 0.9 -> 0.8 -> 0.9; the attack runs with the model in train mode (model.train() throughout)
    settings={
        "epochs": 15,
        "lr": 0.2,
        "schedule": "cyclic",
        "warmup": 0.5,
        "momentum_cycle": (0.8, 0.9),
        "attack_bn": "train",
    },
    reference="Wong et al. 2020: 46% PGD-50 on PreActResNet-18 (CIFAR-10, eps 8/255), 12 min on one 2080 Ti",
    reference_backbone="preact_resnet18",
)


@hookimpl
def register_methods(register):
    """Register the ``pgd-at`` and ``fgsm-rs`` presets."""
    register(PGD_AT)
    register(FGSM_RS)
