"""Sanity checks of a model before a robustness evaluation.

AutoAttack's authors (Croce & Hein 2020; "flags" in their code) recommend checking a
model before trusting an attack's number. ``energyat eval`` runs :func:`sanity_checks`
before any attack and prints each finding as a yellow one-line warning; nothing here stops
an evaluation. The checks:

* **randomised / non-deterministic**: two forward passes on the same batch differ
  (dropout left on at test time, noise injection, ...): a fixed-input attack then
  overestimates robustness; use an EOT attack (``energyat describe evaluator``);
* **probabilities, not logits**: every row is non-negative and sums to one, or every
  output lies in [0, 1] (a softmax or sigmoid at the end of the network): cross-entropy
  on probabilities saturates and gradient attacks weaken;
* **zero input gradients** (obfuscated / masked gradients) for most points: the gradient
  of the cross-entropy with respect to the input is exactly zero, so gradient-based
  attacks cannot move.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: relative difference of two forward passes above which a model counts as randomised
RANDOM_TOL = 1e-4
#: how close to 1 a row sum must be for the outputs to look like probabilities
PROB_TOL = 1e-3
#: fraction of points with an all-zero input gradient above which gradients count as masked
ZERO_GRAD_FRACTION = 0.5


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n: int = 100) -> list[str]:
    """Check ``model`` on the first ``n`` points of ``(x, y)``; return warnings (empty when all is well).

    The model is used in the mode it is in (``energyat eval`` puts it in eval mode) and
    its parameters' ``.grad`` are left untouched.
    """
    x, y = x[:n], y[:n]
    if len(x) == 0:
        return []
    warnings: list[str] = []
    with torch.no_grad():
        first = model(x).float()
        second = model(x).float()
    if not torch.isfinite(first).all():
        warnings.append(
            "the model's outputs contain NaN or infinite values on clean inputs: attacks and accuracies are unreliable"
        )
        return warnings
    scale = first.flatten(1).norm(dim=1).clamp_min(1e-10)
    rel_diff = ((first - second).flatten(1).norm(dim=1) / scale).max().item()
    if rel_diff > RANDOM_TOL or (first.argmax(1) != second.argmax(1)).any():
        warnings.append(
            f"the model looks randomised: two forward passes on the same inputs differ (relative difference "
            f"{rel_diff:.2g}); a fixed-input attack overestimates robustness, check for dropout or noise at test "
            "time or use an EOT attack (`energyat describe evaluator` lists the installed evaluators)"
        )
    if looks_like_probabilities(first):
        warnings.append(
            "the model's outputs look like probabilities (non-negative rows summing to 1, or all in [0, 1]) rather "
            "than logits; remove the final softmax/sigmoid, attacks on probabilities are weak"
        )
    zero = zero_gradient_fraction(model, x, y)
    if zero > ZERO_GRAD_FRACTION:
        warnings.append(
            f"the input gradient of the loss is exactly zero for {zero:.0%} of the points (obfuscated or masked "
            "gradients); gradient-based attacks cannot move them, so add a gradient-free attack such as "
            "Square (`energyat describe evaluator`) before trusting the robust accuracy"
        )
    return warnings


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    """True when every row is non-negative and sums to 1 (within PROB_TOL), or every value is in [0, 1]."""
    outputs = outputs.float()
    if outputs.min().item() < 0:
        return False
    rows_sum_to_one = ((outputs.sum(dim=1) - 1).abs() < PROB_TOL).all().item()
    in_unit_interval = outputs.max().item() <= 1.0
    return bool(rows_sum_to_one or in_unit_interval)


def zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the points whose input gradient of the cross-entropy is exactly zero."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:  # the output does not depend on the input at all
        return 1.0
    return (grad.flatten(1).abs().sum(dim=1) == 0).float().mean().item()


def print_warnings(console, warnings: Iterable[str]) -> None:
    """Print each warning as a yellow one-liner."""
    from rich.markup import escape

    for msg in warnings:
        console.print(f"[yellow]warning: {escape(msg)}[/]", highlight=False, soft_wrap=True)
