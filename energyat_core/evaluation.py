"""Measuring a classifier: clean accuracy, PGD robustness, energies, and the report.

Training calls :func:`quick_eval` after every epoch on a held-out subset; ``energyat
eval`` calls :func:`evaluate` with any registered evaluators and reports the per-point
worst case over them with RobustBench's field names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from energyat_core.components import Attack, Evaluator, RunContext
from energyat_core.energy import marginal_energy
from energyat_core.modes import model_mode
from energyat_core.options import option
from energyat_core.perturbation import OBJECTIVES, default_step, pgd
from energyat_core.threat import ThreatModel


def batched(n: int, batch_size: int) -> Iterable[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for ``x`` in batches (float32)."""
    return torch.cat([model(x[s]).float() for s in batched(len(x), batch_size)])


def quick_eval(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    batch_size: int,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """Clean and PGD-``steps`` accuracy plus mean ``E(x)`` and ``E(x_adv)`` on (x, y)."""
    correct = robust = 0
    e_clean = e_adv = 0.0
    alpha = default_step(eps, steps) if steps > 0 else 0.0
    with model_mode(model, training=False):
        for s in batched(len(x), batch_size):
            xb, yb = x[s], y[s]
            with autocast():
                with torch.no_grad():
                    logits = model(xb).float()
                x_adv = pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, norm=norm) if steps > 0 else xb  # type: ignore[arg-type]
                with torch.no_grad():
                    logits_adv = model(x_adv).float()
            correct += (logits.argmax(1) == yb).sum().item()
            robust += (logits_adv.argmax(1) == yb).sum().item()
            e_clean += marginal_energy(logits).sum().item()
            e_adv += marginal_energy(logits_adv).sum().item()
    n = max(len(x), 1)
    return {"clean_acc": correct / n, "robust_acc": robust / n, "energy_clean": e_clean / n, "energy_adv": e_adv / n}


class PGDEvaluator(Evaluator):
    """PGD-K with restarts under the CE and the CW-margin objective (model in eval mode)."""

    @dataclass
    class Config:
        steps: int = option(20, "PGD iterations", ge=1)
        restarts: int = option(1, "random restarts; a point counts as robust only if it survives all", ge=1)
        objectives: tuple[str, ...] = option(
            ("ce", "cw"), "objectives to run, each reported separately", choices=OBJECTIVES
        )
        alpha: float | None = option(
            None, "step size; none: eps/4 (2/255 at 8/255), 2.5*eps/steps below 10 steps", gt=0
        )

    def run(self, model, x, y, *, eps, norm, batch_size):
        cfg = self.config
        alpha = cfg.alpha if cfg.alpha is not None else default_step(eps, cfg.steps)
        out = {}
        for objective in cfg.objectives:
            masks = []
            for s in batched(len(x), batch_size):
                x_adv = pgd(
                    model,
                    x[s],
                    y[s],
                    eps=eps,
                    alpha=alpha,
                    steps=cfg.steps,
                    norm=norm,
                    objective=objective,
                    restarts=cfg.restarts,
                )
                with torch.no_grad():
                    masks.append(model(x_adv).argmax(1) == y[s])
            out[f"pgd{cfg.steps}-{objective}"] = torch.cat(masks)
        return out


def eps_text(eps: float, norm: str) -> str:
    """``8/255`` for L-inf radii that are multiples of 1/255, else the number."""
    frac = Fraction(eps).limit_denominator(255)
    if norm == "linf" and abs(float(frac) - eps) < 1e-9 and frac.denominator in (255, 85, 51, 17, 15, 5, 3, 1):
        return f"{frac.numerator * (255 // frac.denominator)}/255"
    return f"{eps:g}"


def report(
    *,
    clean: torch.Tensor,
    per_attack: dict[str, torch.Tensor],
    eps: float,
    norm: str,
    dataset: str,
    architecture: str,
    groups: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The eval.json content: RobustBench's field names plus per-attack accuracies.

    ``clean`` and each value of ``per_attack`` are per-point bool tensors; the robust
    accuracy is the per-point worst case (a point counts only if it is right clean and
    under every attack). ``groups`` maps extra report fields to the attacks whose worst
    case they hold (an evaluator's :attr:`~energyat_core.components.Evaluator.report_field`,
    e.g. RobustBench's ``autoattack_acc``).
    """
    worst = clean.clone()
    for mask in per_attack.values():
        worst &= mask.to(worst.device)
    n = len(clean)
    result: dict[str, Any] = {
        "dataset": dataset,
        "architecture": architecture,
        "threat_model": "Linf" if norm == "linf" else "L2",
        "eps": eps_text(eps, norm),
        "n_examples": n,
        "clean_acc": round(100 * clean.float().mean().item(), 2),
        "robust_acc": round(100 * worst.float().mean().item(), 2),
        "attacks": {
            k: round(100 * (v.to(clean.device) & clean).float().mean().item(), 2) for k, v in per_attack.items()
        },
    }
    for report_field, keys in (groups or {}).items():
        group_worst = clean.clone()
        for key in keys:
            group_worst &= per_attack[key].to(group_worst.device)
        result[report_field] = round(100 * group_worst.float().mean().item(), 2)
    return result


class AttackEvaluator(Evaluator):
    """Any registered attack as an evaluator (``energyat eval --attack NAME``): a point counts as
    robust when the model still classifies the attack's ``x_adv`` right (model in eval mode)."""

    def __init__(self, attack: Attack) -> None:
        super().__init__(attack.config)
        self.attack = attack
        self.name = attack.name

    def setup(self, ctx: RunContext) -> None:
        """Set the attack up as a run would (threat model, device, seed)."""
        self.attack.setup(ctx)

    def run(self, model, x, y, *, eps, norm, batch_size):
        self.attack.threat = ThreatModel(eps=eps, norm=norm, step=self.attack.threat.step)
        masks = []
        for s in batched(len(x), batch_size):
            x_adv = self.attack(model, x[s], y[s])
            with torch.no_grad():
                masks.append(model(x_adv).argmax(1) == y[s])
        return {self.attack.name: torch.cat(masks)}
