"""What an epoch of training measured: loss and accuracy sums, and passes through the model.

The sums stay on the device during the epoch (no host sync per step); :meth:`EpochStats.totals`
sums them over ranks in one all-reduce when the progress bar or the epoch record needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energyat_core import distributed
from energyat_core.components import Batch
from energyat_core.distributed import DistInfo


@dataclass
class PassCounter:
    """Counts forward and backward passes through the model, in samples."""

    forward: int = 0
    backward: int = 0

    def attach(self, model: torch.nn.Module) -> None:
        """Count every forward of ``model`` and the backward of every output that requires a gradient."""

        def on_forward(_module, _inputs, output):
            n = output.shape[0]
            self.forward += n
            if output.requires_grad:
                output.register_hook(lambda grad: self._count_backward(n))

        model.register_forward_hook(on_forward)

    def _count_backward(self, n: int) -> None:
        self.backward += n


@dataclass
class EpochStats:
    """Running sums of one epoch on this rank: ``loss_sum`` and ``correct`` on the device."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> EpochStats:
        """Empty sums on ``device``."""
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def add(self, loss: torch.Tensor, batch: Batch) -> None:
        """Count a step: its mean loss, and the accuracy of the logits it trained on (adversarial if any)."""
        y = batch.y
        logits = batch._logits.get("adv", batch._logits.get("clean"))
        self.loss_sum += loss.detach() * len(y)
        if logits is not None:
            self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def totals(self, dist: DistInfo) -> tuple[float, float, float]:
        """Loss sum, correct count and images seen, summed over ranks (one host sync)."""
        seen = torch.tensor(float(self.seen), device=self.loss_sum.device)
        t = torch.stack([self.loss_sum.float(), self.correct.float(), seen])
        loss_sum, correct, total = distributed.all_reduce_sum(t, dist).tolist()
        return loss_sum, correct, max(total, 1.0)
