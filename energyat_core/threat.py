"""The threat model of a run: one radius, one norm and (optionally) one attack step.

A run trains and is evaluated against one threat model: ``energyat train --eps --norm
--step`` sets it, the training attack reads it (:attr:`energyat_core.components.Attack.threat`),
the per-epoch evaluation uses it, and ``energyat eval`` defaults to it. Step sizes that
papers give relative to the radius (PGD 2/255 at 8/255, FGSM-RS 1.25 eps, TRADES 0.007)
are attack options relative to ``eps`` (``step_ratio``), so that they scale with ``--eps``;
``--step`` replaces them by one absolute step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from energyat_core.errors import ConfigError
from energyat_core.options import display_value

#: the radius of each norm when ``--eps`` is not given (methods.md: L-inf 8/255, L2 0.5)
DEFAULT_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5}

#: the norms a threat model can have
NORMS = ("linf", "l2")


@dataclass(frozen=True)
class ThreatModel:
    """``eps``-ball in ``norm`` around each input (intersected with [0, 1]); ``step``: the run's
    absolute attack step, or ``None`` for each attack's own rule relative to ``eps``."""

    eps: float = DEFAULT_EPS["linf"]
    norm: Literal["linf", "l2"] = "linf"
    step: float | None = None

    def step_size(self, ratio: float) -> float:
        """The attack step: the run's ``step`` when set, else ``ratio * eps`` (the attack's relative rule)."""
        return self.step if self.step is not None else ratio * self.eps

    def describe(self) -> str:
        """``L-inf 8/255`` or ``L2 0.5``, as tables and errors name it."""
        return f"{'L-inf' if self.norm == 'linf' else 'L2'} {display_value(self.eps)}"


def check_norm(norms: Any, kind: str, name: str, norm: str, fix: str = "--norm {}") -> None:
    """ConfigError naming both when a component's ``norms`` (``None``: any) do not include ``norm``.

    ``fix`` shows how to choose a supported norm, with ``{}`` for its name (``--norm {}``).
    """
    if norms is not None and norm not in norms:
        raise ConfigError(
            f"{kind} '{name}' does not support the run's norm {norm} (it supports {', '.join(norms)})",
            f"use {fix.format(norms[0])}, or another {kind} (`energyat describe {kind}` lists them)",
        )
