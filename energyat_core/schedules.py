"""Learning-rate (and momentum) schedules as pure functions of training progress.

The engine sets the lr before every batch from ``lr_at(step, total_steps, ...)`` and, with
a momentum cycle, the SGD momentum from :func:`momentum_at`; a schedule therefore has no
state of its own, and resuming only needs the step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ONECYCLE_DIV = 25.0  # initial lr = peak / 25, as torch's OneCycleLR
ONECYCLE_FINAL_DIV = 1e4  # final lr = initial / 1e4


def _cos_anneal(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2


def lr_at(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    lr: float,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup: float = 0.25,
) -> float:
    """The learning rate for batch ``step`` (0-based) of ``total_steps``.

    - ``constant``: ``lr`` throughout.
    - ``multistep``: ``lr * gamma**k`` after the k-th milestone (fractions of training).
    - ``cosine``: cosine decay from ``lr`` to 0.
    - ``onecycle``: cosine rise from ``lr/25`` to ``lr`` over the first ``warmup`` of
      training, then cosine decay to ``lr/25/1e4`` (torch's OneCycleLR, stepped per batch).
    - ``cyclic``: linear 0 -> ``lr`` at ``warmup`` -> 0 (Wong et al.'s triangle).
    """
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "multistep":
        return lr * gamma ** sum(t >= m for m in milestones)
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * t)) / 2
    if schedule == "onecycle":
        start = lr / ONECYCLE_DIV
        if t < warmup:
            return _cos_anneal(start, lr, t / warmup)
        return _cos_anneal(lr, start / ONECYCLE_FINAL_DIV, (t - warmup) / max(1 - warmup, 1e-12))
    if schedule == "cyclic":
        if t < warmup:
            return lr * t / warmup
        return lr * (1 - t) / max(1 - warmup, 1e-12)
    raise ValueError(f"unknown schedule {schedule!r}")


def momentum_at(
    step: int, total_steps: int, *, schedule: str, cycle: Sequence[float], warmup: float = 0.25
) -> float | None:
    """The SGD momentum for batch ``step`` when ``cycle = (low, high)`` is set and the schedule is
    ``onecycle`` or ``cyclic``, else ``None`` (the momentum stays constant).

    Momentum moves inversely to the lr, as torch's schedulers do by default: ``high`` where
    the lr is lowest, ``low`` at the peak. ``onecycle`` anneals it with cosines (OneCycleLR,
    default 0.85-0.95: WEAT's code); ``cyclic`` moves it linearly (CyclicLR, default 0.8-0.9:
    Wong et al.'s train_fgsm.py).
    """
    if not cycle or schedule not in ("onecycle", "cyclic"):
        return None
    low, high = cycle
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    rising = t < warmup  # the lr rises (momentum falls) until the peak at ``warmup``
    frac = t / warmup if rising else (t - warmup) / max(1 - warmup, 1e-12)
    if schedule == "onecycle":
        return _cos_anneal(high, low, frac) if rising else _cos_anneal(low, high, frac)
    return high - (high - low) * frac if rising else low + (high - low) * frac


def apply_schedule(optimizer: Any, cfg: Any, step: int, total_steps: int) -> None:
    """Set the lr (and the cycled momentum, with ``cfg.momentum_cycle``) of batch ``step`` on every
    parameter group of ``optimizer``, from the schedule settings of the run config ``cfg``."""
    lr = lr_at(
        step, total_steps, schedule=cfg.schedule, lr=cfg.lr, milestones=cfg.milestones, gamma=cfg.gamma,
        warmup=cfg.warmup,
    )  # fmt: skip
    cycle = cfg.momentum_cycle if cfg.optimizer == "sgd" else ()
    momentum = momentum_at(step, total_steps, schedule=cfg.schedule, cycle=cycle, warmup=cfg.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is not None:
            group["momentum"] = momentum


def inert_cycle_note(cfg: Any) -> str | None:
    """A one-line note when ``cfg.momentum_cycle`` is set but its schedule or optimiser keeps the momentum
    constant (e.g. a preset's cycle after ``--schedule cosine``), else ``None``."""
    if not cfg.momentum_cycle or (cfg.schedule in ("onecycle", "cyclic") and cfg.optimizer == "sgd"):
        return None
    return (
        f"momentum_cycle {tuple(cfg.momentum_cycle)} applies to SGD with the onecycle or cyclic schedule; "
        f"with {cfg.optimizer} and {cfg.schedule} the momentum stays constant"
    )
