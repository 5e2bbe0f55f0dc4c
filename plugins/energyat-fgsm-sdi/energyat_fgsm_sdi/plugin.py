"""Hook implementations of the energyat-fgsm-sdi plugin (entry point ``fgsm-sdi``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_fgsm_sdi.attack import FGSMSDI


@hookimpl
def register_attacks(register):
    """Register the ``fgsm-sdi`` attack (its generator is part of the attack's checkpointed state)."""
    register("fgsm-sdi", FGSMSDI)


#: FGSM-SDI (Jia et al. 2022) on top of the ``pgd-at`` preset of energyat-pgd
FGSM_SDI = Method(
    name="fgsm-sdi",
    help=(
        "FGSM-SDI (Jia et al. 2022, 'Boosting fast adversarial training with learnable adversarial "
        "initialization'): label-smoothed CE on x_adv (target 0.9, every other class 0.1/9: their FGSM_SDI.py "
        "--factor 0.9) from one FGSM step of eps (8/255) taken from a sample-dependent initialisation proposed by a "
        "generator that is trained jointly to maximise that loss (Adam lr 1e-3, wd 5e-4, one update every 20 "
        "batches); the model stays in train mode while the adversary is made, as in the released code. SGD lr 0.1, "
        "momentum 0.9, wd 5e-4, batch 128, 110 epochs, lr x0.1 at 100/110 and 105/110 of training"
    ),
    # PGD-AT's optimiser (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, multistep x0.1), with the
    # generator-initialised FGSM attack, a label-smoothed CE and FGSM-SDI's 110-epoch schedule
    based_on="pgd-at",
    parts={
        "attack": (
            "fgsm-sdi",
            {"step_ratio": 1.0, "update_every": 20, "lr": 1e-3, "weight_decay": 5e-4, "smoothing": 0.1},
        ),
        "loss": ("ce", {"smoothing": 0.1}),
    },
    settings={"epochs": 110, "milestones": (100 / 110, 105 / 110), "attack_bn": "train"},
    reference=(
        "Jia, Zhang, Wu, Wang, Cao: Boosting Fast Adversarial Training with Learnable Adversarial Initialization, "
        "IEEE TIP 2022 (arXiv 2110.05007); code github.com/jiaxiaojunQAQ/FGSM-SDI. CIFAR-10, ResNet-18, eps 8/255"
    ),
    reference_backbone="resnet18",
)


@hookimpl
def register_methods(register):
    """Register the ``fgsm-sdi`` training preset."""
    register(FGSM_SDI)
