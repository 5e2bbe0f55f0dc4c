"""Norm-bounded perturbations: projections, attack objectives and the PGD loop.

These pure functions are shared by core's evaluation and by the attack plugins, so that
training and evaluation run exactly the same inner maximisation. Conventions:

* inputs ``x`` are images in [0,1] of shape ``[B, ...]``; every norm is taken per sample;
* the threat model is the ``eps``-ball around ``x`` (``"linf"`` or ``"l2"``) intersected
  with the [0,1] box. :func:`project` handles the ball; the box is handled by clamping
  ``x + delta`` to [0,1], which only shrinks each coordinate of ``delta`` and therefore
  never leaves the ball;
* the model's train/eval mode is left untouched (the caller decides), gradients are
  taken with :func:`torch.autograd.grad` with respect to the input only, so nothing is
  accumulated in the parameters' ``.grad``;
* objectives are computed in float32, so the functions work under ``torch.autocast``
  (bf16/fp16 logits).

FGSM is :func:`pgd` with a single step; :func:`default_step` is the one rule for a PGD
step size that nobody set.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.divergence import kl_per_sample

Norm = Literal["linf", "l2"]
Objective = Literal["ce", "kl", "cw"]
RandomStart = Literal["uniform", "normal", "none"]

NORMS = ("linf", "l2")
OBJECTIVES = ("ce", "kl", "cw")
RANDOM_STARTS = ("uniform", "normal", "none")

#: standard deviation of the "normal" random start (TRADES' ``0.001 * N(0, I)``)
NORMAL_START_STD = 0.001
#: guard against division by a zero norm
_TINY = 1e-12

__all__ = [
    "NORMS",
    "OBJECTIVES",
    "RANDOM_STARTS",
    "default_step",
    "objective_values",
    "pgd",
    "project",
    "random_start_delta",
]


def default_step(eps: float, steps: int) -> float:
    """The PGD step size when none is given: ``eps / 4`` (2/255 at 8/255, Madry et al.'s
    CIFAR-10 setting; eps/4 for L2, methods.md), or ``2.5 * eps / steps`` when there are
    fewer than 10 steps, so that the steps together can still cross the ball
    (Madry et al.'s rule). The same for training attacks and evaluation."""
    return eps / 4 if steps >= 10 else 2.5 * eps / steps


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample of ``t``, shaped ``[B, 1, ..., 1]`` to broadcast against ``t``."""
    norms = t.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``delta`` onto the ``eps``-ball of ``norm``, sample by sample.

    ``"linf"`` clamps every coordinate to ``[-eps, eps]``; ``"l2"`` rescales each sample
    whose L2 norm exceeds ``eps`` to norm ``eps`` (samples inside the ball are unchanged).
    The [0,1] box is not handled here: clamp ``x + delta`` afterwards.
    """
    _check_choice(norm, NORMS, "norm")
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_sample_l2(delta).clamp_min(_TINY)).clamp(max=1.0)
    return delta * scale


def random_start_delta(x: torch.Tensor, eps: float, norm: Norm, random_start: RandomStart) -> torch.Tensor:
    """A starting perturbation for ``x`` (inside the ball; the box is the caller's job).

    * ``"uniform"``: L-inf, ``U(-eps, eps)`` per coordinate. L2: a uniformly random
      direction (a normalised Gaussian) scaled to a radius drawn uniformly from
      ``[0, eps]`` (uniform in radius, not in volume: in high dimension a volume-uniform
      point lies almost surely on the sphere);
    * ``"normal"``: ``0.001 * N(0, I)`` (TRADES' start), projected onto the ball;
    * ``"none"``: zeros.
    """
    _check_choice(norm, NORMS, "norm")
    _check_choice(random_start, RANDOM_STARTS, "random start")
    if random_start == "none":
        return torch.zeros_like(x)
    if random_start == "normal":
        return project(NORMAL_START_STD * torch.randn_like(x), eps, norm)
    if norm == "linf":
        return (torch.rand_like(x) * 2 - 1) * eps
    direction = torch.randn_like(x)
    direction = direction / _per_sample_l2(direction).clamp_min(_TINY)
    radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) * eps
    return direction * radius


def objective_values(
    logits: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attack objective of each sample, shape ``[B]``, in float32 (higher = stronger).

    * ``"ce"``: cross-entropy ``CE(f(x'), y)``;
    * ``"kl"``: ``KL(p(x) || p(x'))`` summed over classes, with ``p = softmax`` and
      ``p(x) = softmax(ref_logits)`` detached (TRADES' inner maximisation); ``y`` is unused;
    * ``"cw"``: the Carlini-Wagner margin ``max_{k != y} f_k(x') - f_y(x')`` (positive
      exactly when the sample is misclassified), as in PGD-CW evaluation.
    """
    _check_choice(objective, OBJECTIVES, "objective")
    logits = logits.float()
    if objective == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if objective == "kl":
        if ref_logits is None:
            raise ValueError("objective 'kl' needs ref_logits (the logits of the clean input)")
        return kl_per_sample(ref_logits.detach(), logits)
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - true


def _single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ref_logits: torch.Tensor | None,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: Norm,
    objective: Objective,
    random_start: RandomStart,
) -> torch.Tensor:
    """One PGD run from one random start; returns a detached x_adv."""
    x_adv = (x + random_start_delta(x, eps, norm, random_start)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = objective_values(model(x_adv), y, objective, ref_logits).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            grad = grad.to(x_adv.dtype)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / _per_sample_l2(grad).clamp_min(_TINY)
            delta = project(x_adv.detach() + alpha * step - x, eps, norm)
            x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: Norm = "linf",
    objective: Objective = "ce",
    random_start: RandomStart = "uniform",
    restarts: int = 1,
) -> torch.Tensor:
    """Projected gradient ascent on ``objective`` inside the ``eps``-ball around ``x``.

    Each of the ``steps`` iterations moves ``x'`` by ``alpha * sign(grad)`` (L-inf) or
    ``alpha * grad / ||grad||_2`` (L2, a zero gradient gives no step), projects onto the
    ball with :func:`project` and clamps to [0,1]. The start is drawn by
    :func:`random_start_delta`. For ``objective="kl"`` the reference logits are
    ``model(x)``, computed once without gradients.

    With ``restarts > 1`` the attack runs that many times from fresh random starts and
    keeps, per sample, a misclassified result if any run found one, otherwise the one
    with the highest objective (ties and equal status keep the earlier run).

    Returns a detached tensor of ``x``'s shape and dtype, in [0,1] and within the ball.
    The model's mode is not changed and no gradient reaches its parameters' ``.grad``.
    Works under ``torch.autocast``. FGSM is this function with ``steps=1``. With ``eps == 0``
    the ball is the point ``x``: it is returned without a pass through the model and
    without drawing random numbers, so that an ``--eps 0`` run trains exactly as clean training.
    """
    _check_choice(norm, NORMS, "norm")
    _check_choice(objective, OBJECTIVES, "objective")
    _check_choice(random_start, RANDOM_STARTS, "random start")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if eps == 0:
        return x.detach().clone()

    x = x.detach()
    y = y.detach()
    ref_logits = None
    if objective == "kl":
        with torch.no_grad():
            ref_logits = model(x).detach().float()
    kwargs: dict[str, Any] = dict(
        eps=eps, alpha=alpha, steps=steps, norm=norm, objective=objective, random_start=random_start
    )

    best = _single_run(model, x, y, ref_logits, **kwargs)
    if restarts == 1:
        return best
    with torch.no_grad():
        logits = model(best)
        best_obj = objective_values(logits, y, objective, ref_logits)
        best_wrong = logits.argmax(dim=1) != y
    for _ in range(restarts - 1):
        cand = _single_run(model, x, y, ref_logits, **kwargs)
        with torch.no_grad():
            logits = model(cand)
            obj = objective_values(logits, y, objective, ref_logits)
            wrong = logits.argmax(dim=1) != y
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (obj > best_obj))
            mask = better.view(-1, *([1] * (x.dim() - 1)))
            best = torch.where(mask, cand, best)
            best_obj = torch.where(better, obj, best_obj)
            best_wrong = best_wrong | wrong
    return best
