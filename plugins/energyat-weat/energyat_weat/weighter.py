"""WEAT's per-sample weights from the clean marginal energy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energyat_core.api import Batch, Weighter, marginal_energy


def energy_weights(logits: torch.Tensor) -> torch.Tensor:
    """``w = 1 / log(1 + exp(|E(x)|))`` = ``1 / softplus(|E(x)|)`` per sample, detached, float32.

    ``E(x) = -logsumexp_k f(x)_k`` is the marginal energy of ``logits``. Samples whose
    energy is close to 0 weigh most (``w -> 1/log 2``); confident, low-energy samples
    weigh little (``w ~ 1/|E|``).
    """
    energy = marginal_energy(logits.detach())
    return 1.0 / F.softplus(energy.abs())


class EnergyWeighter(Weighter):
    """WEAT (Mirza et al. 2024): w_i = 1 / softplus(|E(x_i)|), E the marginal energy of the clean logits, detached.

    Uses the batch's shared clean logits; with a loss that needs no clean forward pass
    (``--loss ce`` on x_adv) it adds one, in the model's training mode. Usable with any
    loss, e.g. ``--attack pgd --loss ce --weighter energy`` for energy-weighted PGD-AT.
    """

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The detached weights of ``batch``'s samples, shape ``[B]``."""
        return energy_weights(batch.logits_clean)
