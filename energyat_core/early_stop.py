"""Wong et al.'s early stop against catastrophic overfitting (``--early-stop``).

Fast adversarial training with a single-step attack can collapse within an epoch: the
model becomes robust to its own FGSM and loses all robustness to PGD. Wong et al.'s
``train_fgsm.py --early-stop`` checks after every epoch: PGD with 5 steps of 2/255 (eps/4)
and one restart on the epoch's first training batch, the model in train mode; when that
accuracy falls by more than 0.2 below the previous epoch's, training stops and the weights
of the previous epoch are kept. :class:`EarlyStop` is that check; the trainer keeps the
previous epoch's checkpoint and ends the run.

Unlike their code, the check leaves the model's BatchNorm running statistics untouched
(:func:`~energyat_core.modes.frozen_running_stats`), so that checking is not training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from energyat_core import distributed
from energyat_core.distributed import DistInfo
from energyat_core.modes import frozen_running_stats, model_mode
from energyat_core.perturbation import pgd
from energyat_core.threat import ThreatModel

#: PGD steps of the check and its step relative to eps (train_fgsm.py: attack_pgd(..., pgd_alpha=2/255, 5, 1))
CHECK_STEPS = 5
CHECK_STEP_RATIO = 0.25
#: a fall of the check's accuracy by more than this (a fraction) from one epoch to the next is a collapse
COLLAPSE_DROP = 0.2


def check_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    dist: DistInfo,
    autocast: Callable[[], Any],
) -> float:
    """PGD-5 accuracy of ``model`` on the batch (``x``, ``y``), train mode, averaged over ranks."""
    with model_mode(model, training=True), frozen_running_stats(model), autocast():
        x_adv = pgd(
            model, x, y, eps=threat.eps, alpha=CHECK_STEP_RATIO * threat.eps, steps=CHECK_STEPS, norm=threat.norm
        )
        with torch.no_grad():
            correct = (model(x_adv).argmax(1) == y).sum().float()
    totals = distributed.all_reduce_sum(torch.stack([correct, torch.tensor(float(len(y)), device=x.device)]), dist)
    return (totals[0] / totals[1].clamp_min(1)).item()


def collapsed(previous: float, current: float) -> bool:
    """Whether the check's accuracy fell by more than :data:`COLLAPSE_DROP` since the previous epoch."""
    return current - previous < -COLLAPSE_DROP
