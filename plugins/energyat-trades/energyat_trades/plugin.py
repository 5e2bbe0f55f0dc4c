"""Hook implementations of the energyat-trades plugin (entry point ``trades``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_trades.loss import Trades

TRADES = Method(
    name="trades",
    help=(
        "TRADES (Zhang et al. 2019): CE(f(x),y) + beta*KL(p(x)||p(x_adv)), beta 6, x_adv maximising the KL "
        "(10 steps of 2/255 in the 8/255 L-inf ball from x + 0.001*N(0,I)). Schedule from the authors' CIFAR-10 "
        "script train_trades_cifar10.py: SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, "
        "76 epochs, lr x0.1 for the last 2 epochs (from their epoch 75, i.e. at 74/76 of training)"
    ),
    parts={
        # TRADES' inner maximisation, the ``pgd`` attack of energyat-pgd: KL objective from
        # x + 0.001 N(0, I), 10 steps of 2/255 (their code: 0.007) in the 8/255 L-inf ball
        "attack": (
            "pgd",
            {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "objective": "kl", "random_start": "normal"},
        ),
        "loss": ("trades", {"beta": 6.0}),
        "weighter": ("uniform", {}),
    },
    settings={
        "epochs": 76,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "batch_size": 128,
        "schedule": "multistep",
        "milestones": (74 / 76,),
        "gamma": 0.1,
    },
    reference="Zhang et al. 2019 (their README), WRN-34-10, CIFAR-10, eps 8/255: clean 84.92%, AutoAttack 53.08%",
)


@hookimpl
def register_losses(register):
    """Register the ``trades`` loss."""
    register("trades", Trades)


@hookimpl
def register_methods(register):
    """Register the ``trades`` preset."""
    register(TRADES)
