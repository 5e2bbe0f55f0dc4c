"""The TRADES loss (Zhang et al. 2019): natural cross-entropy plus a KL smoothness term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from energyat_core.api import Batch, Loss, kl_per_sample, option


@dataclass
class TradesConfig:
    """Options of the ``trades`` loss."""

    beta: float = option(6.0, "weight of the KL term, 1/lambda in the paper (TRADES' CIFAR-10 setting: 6)", ge=0)
    ce_on: Literal["clean", "adv"] = option(
        "clean",
        "inputs of the cross-entropy term: clean (TRADES; WEAT's 'nat' variant) or adv (WEAT's 'adv' variant)",
    )


class Trades(Loss):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), per sample.

    The KL is summed over classes; the engine's (weighted) batch mean then gives
    TRADES' batch average. Both ``f(x)`` and ``f(x_adv)`` receive gradients, as in the
    authors' code, and both come from the batch's shared logits, so the loss adds no
    forward pass of its own. Computed in float32.
    """

    Config = TradesConfig

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The per-sample TRADES loss of ``batch``, shape ``[B]``."""
        logits_clean = batch.logits_clean
        logits_adv = batch.logits_adv
        ce_logits = logits_clean if self.config.ce_on == "clean" else logits_adv
        ce = F.cross_entropy(ce_logits.float(), batch.y, reduction="none")
        return ce + self.config.beta * kl_per_sample(logits_clean, logits_adv)
