"""Hook implementations of the energyat-trades plugin (entry point ``trades``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_core.api import Method
from energyat_trades.loss import Trades

#: TRADES' step relative to the radius: their train_trades_cifar10.py uses step 0.007 at epsilon 0.031 (8/255)
TRADES_STEP_RATIO = 0.007 / (8 / 255)

TRADES = Method(
    name="trades",
    help=(
        "TRADES (Zhang et al. 2019): CE(f(x),y) + beta*KL(p(x)||p(x_adv)), beta 6, x_adv maximising the KL "
        "(10 steps of 0.007 at 8/255, i.e. 0.2231*eps, as their code, in the run's eps-ball from x + 0.001*N(0,I), "
        "the model in eval mode while the adversary is made). Schedule from the authors' CIFAR-10 "
        "script train_trades_cifar10.py: SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, "
        "76 epochs, lr x0.1 for the last 2 epochs (from their epoch 75, i.e. at 74/76 of training)"
    ),
    parts={
        # TRADES' inner maximisation, the ``pgd`` attack of energyat-pgd: KL objective from
        # x + 0.001 N(0, I), 10 steps of 0.007 at eps 0.031 (their code), i.e. 0.007 / (8/255) of eps
        "attack": (
            "pgd",
            {"step_ratio": TRADES_STEP_RATIO, "steps": 10, "objective": "kl", "random_start": "normal"},
        ),
        "loss": ("trades", {"beta": 6.0}),
        "weighter": ("uniform", {}),
    },
    settings={
        "attack_bn": "eval",
        # train_trades_cifar10.py feeds [0, 1] images to the network (ToTensor only, no Normalize)
        "normalize": "none",
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
    reference_backbone="wrn34_10",
)


@hookimpl
def register_losses(register):
    """Register the ``trades`` loss."""
    register("trades", Trades)


@hookimpl
def register_methods(register):
    """Register the ``trades`` preset."""
    register(TRADES)
