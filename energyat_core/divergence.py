"""The KL divergence between the class distributions of two sets of logits, per sample.

One implementation for everything that compares two predictions: the ``kl`` attack
objective (TRADES' inner maximisation), the TRADES loss and the bridged loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` summed over classes, one value per sample (shape ``[B]``, float32).

    ``p = softmax(logits_p)`` and ``q = softmax(logits_q)``. Gradients flow into both
    arguments (TRADES' outer loss differentiates through ``p(x)`` as well); detach an
    argument yourself where a method wants it fixed. Computed from log-probabilities, so
    it stays finite when a probability underflows.
    """
    log_p = F.log_softmax(logits_p.float(), dim=1)
    log_q = F.log_softmax(logits_q.float(), dim=1)
    # kl_div(input=log q, target=log p) is p * (log p - log q), elementwise
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
