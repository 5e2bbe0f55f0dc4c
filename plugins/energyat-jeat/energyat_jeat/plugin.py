"""Hook implementations of the energyat-jeat plugin (entry point ``jeat``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method

JEAT_METHOD = Method(
    name="jeat",
    help=(
        "Joint Energy Adversarial Training (Zhu et al. 2021): CE on x_adv (PGD-10, 2/255, eps 8/255, CE objective) "
        "+ 1.0 * (E(x_adv) - E(x_sgld)), x_sgld from a 10,000-image SGLD replay buffer (20 steps, eta 1, sigma 0.01, "
        "5% restarts from uniform noise; JEM's defaults). Schedule (chosen default, the paper gives none here): "
        "PGD-AT's, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 100 epochs, lr x0.1 at 50% and 75%"
    ),
    # pgd-at's attack (PGD on E(x, y), i.e. the CE: 10 steps of 2/255 in the 8/255 L-inf ball), weighter and schedule
    based_on="pgd-at",
    parts={"loss": ("jeat", {})},
    reference=(
        "Zhu et al. 2021 (ICCV), CIFAR-10: Inception Score 8.80 of SGLD samples (robust classifiers before: 7.50)"
    ),
)


@hookimpl
def register_losses(register):
    """Register the ``jeat`` loss."""
    from energyat_jeat.loss import JEAT

    register("jeat", JEAT)


@hookimpl
def register_methods(register):
    """Register the ``jeat`` preset (based on ``pgd-at`` from energyat-pgd)."""
    register(JEAT_METHOD)
