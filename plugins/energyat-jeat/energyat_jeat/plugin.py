"""Hook implementations of the energyat-jeat plugin (entry point ``jeat``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_jeat.jem_units import JEM_ETA, JEM_SGLD_STEPS, JEM_SIGMA

JEAT_METHOD = Method(
    name="jeat",
    help=(
        "Joint Energy Adversarial Training (Zhu, Ma, Sun, Chen, Jiang, Li; ICCV 2021): CE on x_adv (pgd-at's attack: "
        "PGD-10 of eps/4 in the run's eps-ball, CE objective) + 1.0 * (E(x_adv) - E(x_sgld)), x_sgld from a "
        "10,000-image SGLD replay buffer: 20 steps of eta 0.5, sigma 0.005 per training step (JEM's step 1 and "
        "noise 0.01 on [-1,1] images, converted to [0,1] images), 5% restarts from the sgld plugin's pca start "
        "(methods.md). No reference code is public. Schedule (chosen default, the paper gives none here): "
        "PGD-AT's, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 100 epochs, lr x0.1 at 50% and 75%"
    ),
    # pgd-at's attack (PGD on E(x, y), i.e. the CE, with the run's threat model), weighter and schedule
    based_on="pgd-at",
    # the loss's defaults, named here so that `energyat describe method jeat` shows them: lambda 1 (methods.md),
    # JEM's 20 steps with its step and noise converted to [0,1] images (jem_units), the sgld plugin's pca start,
    # JEM's separate passes for the two energies
    parts={
        "loss": (
            "jeat",
            {
                "lam": 1.0,
                "sgld_steps": JEM_SGLD_STEPS,
                "sgld_eta": JEM_ETA,
                "sgld_sigma": JEM_SIGMA,
                "init": "pca",
                "energy_bn": "separate",
            },
        )
    },
    reference=(
        "Zhu, Ma, Sun, Chen, Jiang, Li 2021 (ICCV; arXiv:2108.09093), CIFAR-10: Inception Score 8.80 of SGLD "
        "samples (robust classifiers before: 7.50)"
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
