"""PGD, FGSM and FGSM-RS: one gradient attack with three sets of defaults.

All three call :func:`energyat_core.perturbation.pgd`; FGSM and FGSM-RS are PGD with a
single step and differ only in their start and step size:

* ``pgd`` (Madry et al. 2018): random start ``U(-eps, eps)``, 10 steps of 2/255;
* ``fgsm`` (Goodfellow et al. 2015): no random start, one step of ``eps``;
* ``fgsm-rs`` (Wong et al. 2020): random start ``U(-eps, eps)``, one step of ``1.25 * eps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from energyat_core.components import Attack
from energyat_core.config import option
from energyat_core.perturbation import NORMS, OBJECTIVES, RANDOM_STARTS, pgd

#: default radius per threat model (methods.md: L-inf 8/255, L2 0.5)
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}

_EPS_HELP = "radius of the threat model; none: 8/255 for linf, 0.5 for l2"
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


class _Options:
    """Validation and resolved values shared by the attacks' configs."""

    eps: float | None
    alpha: float | None
    norm: str
    objective: str
    random_start: str

    def __post_init__(self) -> None:
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha (the step size) must be positive, got {self.alpha}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.random_start not in RANDOM_STARTS:
            raise ValueError(f"random_start must be one of {', '.join(RANDOM_STARTS)}, got {self.random_start!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be at least 1, got {self.restarts}")

    # single-step attacks override these two with properties
    steps: int
    restarts: int

    def resolved_eps(self) -> float:
        """``eps``, or the default radius of the chosen norm."""
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps

    def default_alpha(self, eps: float) -> float:
        raise NotImplementedError

    def resolved_alpha(self) -> float:
        """``alpha``, or this attack's default step size for the resolved ``eps``."""
        return self.default_alpha(self.resolved_eps()) if self.alpha is None else self.alpha

    def pgd_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`energyat_core.perturbation.pgd` these options mean."""
        return {
            "eps": self.resolved_eps(),
            "alpha": self.resolved_alpha(),
            "steps": self.steps,
            "norm": self.norm,
            "objective": self.objective,
            "random_start": self.random_start,
            "restarts": self.restarts,
        }


@dataclass
class PGDConfig(_Options):
    """Options of the ``pgd`` attack."""

    eps: float | None = option(None, _EPS_HELP)
    alpha: float | None = option(None, "step size; none: 2/255 for linf, eps/4 for l2 (Madry et al.)")
    steps: int = option(10, "number of gradient steps K")
    norm: Literal["linf", "l2"] = option("linf", _NORM_HELP)
    objective: Literal["ce", "kl", "cw"] = option("ce", _OBJECTIVE_HELP)
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)
    restarts: int = option(
        1,
        "independent runs from fresh random starts; per sample a misclassified result wins, else the highest objective",
    )

    def default_alpha(self, eps: float) -> float:
        return 2 / 255 if self.norm == "linf" else eps / 4


@dataclass
class FGSMConfig(_Options):
    """Options of the ``fgsm`` attack (one step)."""

    eps: float | None = option(None, _EPS_HELP)
    alpha: float | None = option(None, "step size; none: eps (Goodfellow et al. 2015)")
    norm: Literal["linf", "l2"] = option("linf", _NORM_HELP)
    objective: Literal["ce", "kl", "cw"] = option("ce", _OBJECTIVE_HELP)
    random_start: Literal["uniform", "normal", "none"] = option("none", _START_HELP)

    @property
    def steps(self) -> int:
        return 1

    @property
    def restarts(self) -> int:
        return 1

    def default_alpha(self, eps: float) -> float:
        return eps


@dataclass
class FGSMRSConfig(FGSMConfig):
    """Options of the ``fgsm-rs`` attack (random start, then one step)."""

    alpha: float | None = option(None, "step size; none: 1.25 * eps (Wong et al. 2020)")
    random_start: Literal["uniform", "normal", "none"] = option("uniform", _START_HELP)

    def default_alpha(self, eps: float) -> float:
        return 1.25 * eps


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018): K projected steps on the loss from a random start."""

    Config = PGDConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(model, x, y, **self.config.pgd_kwargs())


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x."""

    Config = FGSMConfig


class FGSMRS(PGD):
    """FGSM with random start (Wong et al. 2020, "Fast is better than free"): U(-eps,eps), then one step of 1.25*eps."""

    Config = FGSMRSConfig
