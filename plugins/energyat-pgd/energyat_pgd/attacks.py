"""PGD, FGSM and FGSM-RS: one gradient attack with three sets of defaults.

All three call :func:`energyat_core.api.pgd`; FGSM and FGSM-RS are PGD with a single step
and differ only in their start and step size:

* ``pgd`` (Madry et al. 2018): random start ``U(-eps, eps)``, 10 steps of
  :func:`~energyat_core.api.default_step` (eps/4: 2/255 at 8/255);
* ``fgsm`` (Goodfellow et al. 2015): no random start, one step of ``eps``;
* ``fgsm-rs`` (Wong et al. 2020): random start ``U(-eps, eps)``, one step of ``1.25 * eps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from energyat_core.api import Attack, ThreatModel, default_step, option, pgd

_OBJECTIVE_HELP = (
    "what the attack maximises: ce (cross-entropy), kl (KL(p(x) || p(x')) as in TRADES; "
    "start with random_start=normal, its gradient vanishes at x), cw (margin max_{k!=y} f_k - f_y)"
)
_START_HELP = (
    "start point: uniform (U(-eps,eps); l2: random direction, radius uniform in [0,eps]), "
    "normal (0.001*N(0,I), TRADES), none"
)


class _GradientAttackOptions:
    """What the option sets of this plugin's attacks mean (each declares its fields: ``pgd``'s
    first one is ``steps``, so that ``pgd:50`` means 50 steps, as for the ``pgd`` evaluator).

    The radius and norm are not options: they are the run's threat model (``--eps``,
    ``--norm``), which the attack reads from :attr:`~energyat_core.api.Attack.threat`. The
    step is relative to the radius (``step_ratio``, each attack with its own default rule in
    :meth:`default_ratio`), so that it scales with ``--eps``; the run's ``--step`` replaces it
    by an absolute step. Single-step attacks have ``steps`` and ``restarts`` fixed to 1.
    """

    step_ratio: float | None
    objective: str
    random_start: str

    def default_ratio(self) -> float:
        """The step as a multiple of eps when ``step_ratio`` is not set."""
        raise NotImplementedError

    def pgd_kwargs(self, threat: ThreatModel) -> dict[str, Any]:
        """The keyword arguments of :func:`energyat_core.api.pgd` these options mean in ``threat``."""
        ratio = self.default_ratio() if self.step_ratio is None else self.step_ratio
        return {
            "eps": threat.eps,
            "alpha": threat.step_size(ratio),
            "steps": self.steps,  # type: ignore[attr-defined]
            "norm": threat.norm,
            "objective": self.objective,
            "random_start": self.random_start,
            "restarts": self.restarts,  # type: ignore[attr-defined]
        }


@dataclass
class PGDConfig(_GradientAttackOptions):
    """Options of the ``pgd`` attack."""

    steps: int = option(10, "number of gradient steps K", ge=1)
    restarts: int = option(
        1,
        "independent runs from fresh random starts; per sample a misclassified result wins, else the highest objective",
        ge=1,
    )
    step_ratio: float | None = option(
        None,
        "step size as a multiple of eps; none: 1/4 (2/255 at 8/255, Madry et al.) from 10 steps on, else 2.5/steps",
        gt=0,
    )
    objective: Literal["ce", "kl", "cw"] = option("ce", _OBJECTIVE_HELP)
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)

    def default_ratio(self) -> float:
        """Core's rule for a PGD step nobody set (Madry et al.), relative to eps."""
        return default_step(1.0, self.steps)


@dataclass
class FGSMConfig(_GradientAttackOptions):
    """Options of the ``fgsm`` attack (one step)."""

    step_ratio: float | None = option(None, "step size as a multiple of eps; none: 1 (Goodfellow et al. 2015)", gt=0)
    objective: Literal["ce", "kl", "cw"] = option("ce", _OBJECTIVE_HELP)
    random_start: Literal["uniform", "normal", "none"] = option("none", _START_HELP)

    @property
    def steps(self) -> int:
        """One step, by definition."""
        return 1

    @property
    def restarts(self) -> int:
        """One run, by definition."""
        return 1

    def default_ratio(self) -> float:
        """FGSM steps to the edge of the ball."""
        return 1.0


@dataclass
class FGSMRSConfig(FGSMConfig):
    """Options of the ``fgsm-rs`` attack (random start, then one step)."""

    step_ratio: float | None = option(
        None, "step size as a multiple of eps; none: 1.25 (Wong et al. 2020, train_fgsm.py --alpha 10 at eps 8)", gt=0
    )
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)

    def default_ratio(self) -> float:
        """Wong et al.'s step from a random start."""
        return 1.25


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018): K projected steps on the loss from a random start."""

    Config = PGDConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x_adv`` from :func:`energyat_core.api.pgd` with this attack's options in the run's threat model."""
        return pgd(model, x, y, **self.config.pgd_kwargs(self.threat))


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x."""

    Config = FGSMConfig


class FGSMRS(PGD):
    """FGSM with random start (Wong et al. 2020, "Fast is better than free"): U(-eps,eps), then one step of 1.25*eps."""

    Config = FGSMRSConfig
