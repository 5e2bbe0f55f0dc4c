"""Energies of a classifier, as the energy-based view of adversarial training uses them.

With logits ``f(x)``: marginal energy ``E(x) = -logsumexp_k f(x)_k``, joint energy
``E(x, y) = -f(x)_y``, and ``CE(f(x), y) = E(x, y) - E(x)``.
"""

from __future__ import annotations

import torch


def marginal_energy(logits: torch.Tensor) -> torch.Tensor:
    """``E(x) = -logsumexp_k f(x)_k`` per sample (computed in float32)."""
    return -torch.logsumexp(logits.float(), dim=1)


def joint_energy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``E(x, y) = -f(x)_y`` per sample (computed in float32)."""
    return -logits.float().gather(1, y[:, None]).squeeze(1)
