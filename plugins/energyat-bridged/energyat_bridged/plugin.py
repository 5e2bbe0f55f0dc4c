"""Hook implementations of the energyat-bridged plugin (entry point ``bridged``)."""

from __future__ import annotations

from energyat_bridged.loss import Bridged
from energyat_core import hookimpl
from energyat_core.api import Method

#: TRADES' preset (energyat-trades) with PGD-AT's adversary and the bridged loss
BAT = Method(
    name="bat",
    help=(
        "Bridged adversarial training (Kim, Lee, Lee, Lee 2021): CE(f(x),y) + beta * sum_{i=1..m} "
        "KL(p(x_{i-1})||p(x_i)) on m bridges x_i = x + (i/m)(x_adv - x); x_adv from PGD on the CE (10 steps of "
        "eps/4, 2/255 at 8/255, in the run's eps-ball, uniform start). The authors left no defaults in code: m=5 "
        "and beta=6 are energyat's defaults. KL-generated adversary instead: --set attack.objective=kl --set "
        "attack.random_start=normal. Schedule (energyat's choice; the method's specification gives none): "
        "TRADES' CIFAR-10 recipe, SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, 76 epochs, lr x0.1 at 74/76 of "
        "training"
    ),
    based_on="trades",
    parts={
        # TRADES' pgd attack turned to the CE from a uniform start: PGD-AT's adversary
        "attack": ("pgd", {"objective": "ce", "random_start": "uniform", "step_ratio": 0.25}),
        "loss": ("bridged", {"m": 5, "beta": 6.0}),
    },
    reference="Kim et al. 2021, arXiv:2108.11135; no reference number is pinned by energyat's specification",
)


@hookimpl
def register_losses(register):
    """Register the ``bridged`` loss."""
    register("bridged", Bridged)


@hookimpl
def register_methods(register):
    """Register the ``bat`` preset."""
    register(BAT)
