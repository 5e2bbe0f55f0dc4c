"""PGD, FGSM and FGSM-RS: one gradient attack with three sets of defaults.

All three call :func:`energyat_core.api.pgd`; FGSM and FGSM-RS are PGD with a single step
and differ only in their start and step size:

* ``pgd`` (Madry et al. 2018): random start ``U(-eps, eps)``, 10 steps of
  :func:`~energyat_core.api.default_step` (2/255 at 8/255);
* ``fgsm`` (Goodfellow et al. 2015): no random start, one step of ``eps``;
* ``fgsm-rs`` (Wong et al. 2020): random start ``U(-eps, eps)``, one step of ``1.25 * eps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from energyat_core.api import Attack, default_step, option, pgd

#: default radius per threat model (methods.md: L-inf 8/255, L2 0.5)
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}

_NORM_HELP = (
    "threat model: linf (sign-gradient steps, box projection) or l2 (normalised-gradient steps, ball projection)"
)
_OBJECTIVE_HELP = (
    "what the attack maximises: ce (cross-entropy), kl (KL(p(x) || p(x')) as in TRADES; "
    "start with random_start=normal, its gradient vanishes at x), cw (margin max_{k!=y} f_k - f_y)"
)
_START_HELP = (
    "start point: uniform (U(-eps,eps); l2: random direction, radius uniform in [0,eps]), "
    "normal (0.001*N(0,I), TRADES), none"
)


@dataclass
class _GradientAttackOptions:
    """The options every attack of this plugin shares, and the values they resolve to.

    ``alpha`` is declared again by each attack with its own default rule
    (:meth:`default_alpha`); single-step attacks have ``steps`` and ``restarts`` fixed to 1.
    """

    eps: float | None = option(None, "radius of the threat model; none: 8/255 for linf, 0.5 for l2", gt=0)
    alpha: float | None = option(None, "step size; none: the attack's default", gt=0)
    norm: Literal["linf", "l2"] = option("linf", _NORM_HELP)
    objective: Literal["ce", "kl", "cw"] = option("ce", _OBJECTIVE_HELP)
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)

    # each attack provides ``steps`` and ``restarts`` (options of ``pgd``, 1 for single-step attacks)

    def default_alpha(self, eps: float) -> float:
        """The step size when ``alpha`` is not set."""
        raise NotImplementedError

    def resolved_eps(self) -> float:
        """``eps``, or the default radius of the chosen norm."""
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps

    def resolved_alpha(self) -> float:
        """``alpha``, or this attack's default step size for the resolved ``eps``."""
        return self.default_alpha(self.resolved_eps()) if self.alpha is None else self.alpha

    def pgd_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`energyat_core.api.pgd` these options mean."""
        return {
            "eps": self.resolved_eps(),
            "alpha": self.resolved_alpha(),
            "steps": self.steps,  # type: ignore[attr-defined]
            "norm": self.norm,
            "objective": self.objective,
            "random_start": self.random_start,
            "restarts": self.restarts,  # type: ignore[attr-defined]
        }


@dataclass
class PGDConfig(_GradientAttackOptions):
    """Options of the ``pgd`` attack."""

    alpha: float | None = option(
        None, "step size; none: eps/4 (2/255 at 8/255 linf) from 10 steps on, else 2.5*eps/steps", gt=0
    )
    steps: int = option(10, "number of gradient steps K", ge=1)
    restarts: int = option(
        1,
        "independent runs from fresh random starts; per sample a misclassified result wins, else the highest objective",
        ge=1,
    )

    def default_alpha(self, eps: float) -> float:
        """Core's rule for a PGD step nobody set (Madry et al.)."""
        return default_step(eps, self.steps)


@dataclass
class FGSMConfig(_GradientAttackOptions):
    """Options of the ``fgsm`` attack (one step)."""

    alpha: float | None = option(None, "step size; none: eps (Goodfellow et al. 2015)", gt=0)
    random_start: Literal["uniform", "normal", "none"] = option("none", _START_HELP)

    @property
    def steps(self) -> int:
        """One step, by definition."""
        return 1

    @property
    def restarts(self) -> int:
        """One run, by definition."""
        return 1

    def default_alpha(self, eps: float) -> float:
        """FGSM steps to the edge of the ball."""
        return eps


@dataclass
class FGSMRSConfig(FGSMConfig):
    """Options of the ``fgsm-rs`` attack (random start, then one step)."""

    alpha: float | None = option(None, "step size; none: 1.25 * eps (Wong et al. 2020)", gt=0)
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)

    def default_alpha(self, eps: float) -> float:
        """Wong et al.'s step from a random start."""
        return 1.25 * eps


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018): K projected steps on the loss from a random start."""

    Config = PGDConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x_adv`` from :func:`energyat_core.api.pgd` with this attack's resolved options."""
        return pgd(model, x, y, **self.config.pgd_kwargs())


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x."""

    Config = FGSMConfig


class FGSMRS(PGD):
    """FGSM with random start (Wong et al. 2020, "Fast is better than free"): U(-eps,eps), then one step of 1.25*eps."""

    Config = FGSMRSConfig
