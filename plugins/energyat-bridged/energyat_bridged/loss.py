"""The bridged loss (Kim, Lee, Lee, Lee 2021): a chain of KL terms from x to x_adv."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from energyat_core.api import Batch, Loss, kl_per_sample, option


@dataclass
class BridgedConfig:
    """Options of the ``bridged`` loss."""

    m: int = option(
        5,
        "number of bridges: points x_i = x + (i/m)(x_adv - x), i = 0..m (the authors left no default; energyat: 5)",
        ge=1,
    )
    beta: float = option(6.0, "weight of the sum of KL terms (the authors left no default; energyat: 6)", ge=0)
    forward: Literal["separate", "batched"] = option(
        "separate",
        "how the m-1 inner points go through the model: separate (one forward per point, as the authors' code; "
        "in train mode each point gets BatchNorm statistics of its own) or batched (one forward of (m-1)*B "
        "images: fewer, larger kernels, but BatchNorm statistics pooled over all inner points)",
    )


class Bridged(Loss):
    """Bridged AT (Kim et al. 2021): CE(f(x),y) + beta * sum_{i=1..m} KL(p(x_{i-1}) || p(x_i)), x_i on x->x_adv.

    ``x_i = x + (i/m) * (x_adv - x)``. The end points reuse the batch's shared logits
    (``x_0 = x``: ``logits_clean``, ``x_m = x_adv``: ``logits_adv``), so only the ``m - 1``
    inner points cost forward passes. Every KL term is differentiated through both of
    its arguments, as in the authors' code. With ``m = 1`` this is the TRADES loss.
    Computed in float32.
    """

    Config = BridgedConfig

    def inner_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Logits of the inner points ``x_1 .. x_{m-1}`` (empty for ``m = 1``)."""
        m = self.config.m
        if m == 1:
            return []
        delta = batch.x_adv - batch.x
        points = [batch.x + (i / m) * delta for i in range(1, m)]
        if self.config.forward == "separate":
            return [batch.model(p) for p in points]
        return list(batch.model(torch.cat(points)).split(batch.x.shape[0]))

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The per-sample bridged loss of ``batch``, shape ``[B]``."""
        chain = [batch.logits_clean, *self.inner_logits(batch), batch.logits_adv]
        ce = F.cross_entropy(batch.logits_clean.float(), batch.y, reduction="none")
        bridges = torch.stack([kl_per_sample(p, q) for p, q in zip(chain[:-1], chain[1:], strict=True)]).sum(0)
        return ce + self.config.beta * bridges
