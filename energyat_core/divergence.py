"""Divergences between predictions and targets, per sample.

:func:`kl_per_sample` is the one implementation for everything that compares two
predictions: the ``kl`` attack objective (TRADES' inner maximisation), the TRADES loss and
the bridged loss. :func:`smoothed_cross_entropy` is the cross-entropy against smoothed
labels used by core's ``ce`` loss and by FGSM-SDI's generator.
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


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against labels that keep ``1 - smoothing`` on the true class and share
    ``smoothing`` evenly over the ``K - 1`` other classes; one value per sample (float32).

    This is FGSM-SDI's ``LabelSmoothLoss`` (their ``--factor 0.9`` is ``smoothing = 0.1``:
    target 0.9, every other class 0.1/9 on CIFAR-10). It differs from torch's
    ``label_smoothing``, which spreads the mass over all K classes, the true one included.
    ``smoothing = 0`` is the plain cross-entropy.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, y[:, None]).squeeze(1)
    if smoothing == 0:
        return nll
    k = log_p.shape[1]
    others = -(log_p.sum(dim=1) + nll) / max(k - 1, 1)  # mean of -log p over the other classes
    return (1 - smoothing) * nll + smoothing * others
