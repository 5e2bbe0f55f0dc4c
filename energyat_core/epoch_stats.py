"""What an epoch of training measured: loss and accuracy sums, energies, and passes through the model.

The sums stay on the device during the epoch (no host sync per step); :meth:`EpochStats.totals`
sums them over ranks in one all-reduce when the progress bar or the epoch record needs them.

The training batches' marginal energies ``E(x)`` and ``E(x_adv)`` (methods.md: the papers'
main diagnostic, and WEAT's argument) are summarised per epoch by their mean and spread.
They come from the logits the step computed anyway; a side the loss did not compute (the
clean logits of PGD-AT's CE, say) is measured by one extra forward pass without gradients,
with frozen BatchNorm statistics, on every :data:`ENERGY_EVERY`-th batch only; that pass is
not counted in ``fwd_per_sample``, which is the method's cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from energyat_core import distributed
from energyat_core.components import Batch
from energyat_core.distributed import DistInfo
from energyat_core.energy import marginal_energy
from energyat_core.modes import frozen_running_stats

#: a side of the energies that the step did not compute is measured on one batch in this many
ENERGY_EVERY = 10
#: the two sides of the energy statistics, in the order of :attr:`EpochStats.energy`
ENERGY_SIDES = ("clean", "adv")


@dataclass
class PassCounter:
    """Counts forward and backward passes through the model, in samples."""

    forward: int = 0
    backward: int = 0
    counting: bool = True

    def attach(self, model: torch.nn.Module) -> None:
        """Count every forward of ``model`` and the backward of every output that requires a gradient."""

        def on_forward(_module, _inputs, output):
            if not self.counting:
                return
            n = output.shape[0]
            self.forward += n
            if output.requires_grad:
                output.register_hook(lambda grad: self._count_backward(n))

        model.register_forward_hook(on_forward)

    def _count_backward(self, n: int) -> None:
        self.backward += n

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Passes made within the block are not the method's cost (e.g. measuring energies for the log)."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True


@dataclass
class EpochStats:
    """Running sums of one epoch on this rank: ``loss_sum`` and ``correct`` on the device."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    #: per side (clean, adv): count, sum and sum of squares of the marginal energies, float64
    energy: torch.Tensor
    seen: int = 0
    batches: int = 0

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> EpochStats:
        """Empty sums on ``device``."""
        return cls(
            torch.zeros((), device=device),
            torch.zeros((), device=device, dtype=torch.long),
            torch.zeros(len(ENERGY_SIDES), 3, device=device, dtype=torch.float64),
        )

    def add_energies(
        self, batch: Batch, uncounted: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    ) -> None:
        """Add the batch's ``E(x)`` and ``E(x_adv)``; call inside the step's autocast, before the update.

        A side without logits is measured on every :data:`ENERGY_EVERY`-th batch (no gradients,
        BatchNorm statistics untouched, the model in the mode of the step's loss), within
        ``uncounted()`` (the trainer's :meth:`PassCounter.paused`: logging is not the method's cost).
        """
        fill = self.batches % ENERGY_EVERY == 0
        self.batches += 1
        for i, side in enumerate(ENERGY_SIDES):
            logits = _logits_of(batch, side)
            if logits is None and fill:
                with torch.no_grad(), frozen_running_stats(batch.model), uncounted():
                    logits = batch.model(batch.x if side == "clean" else batch.x_adv)
            if logits is None:
                continue
            e = marginal_energy(logits.detach().float()).double()
            self.energy[i] += torch.stack(
                [torch.tensor(float(len(e)), device=e.device, dtype=e.dtype), e.sum(), (e * e).sum()]
            )

    def energy_summary(self, dist: DistInfo) -> dict[str, float]:
        """``train_energy_{clean,adv}`` (mean) and ``..._std`` over the epoch, over all ranks (one all-reduce)."""
        totals = distributed.all_reduce_sum(self.energy.clone(), dist).tolist()
        out: dict[str, float] = {}
        for side, (n, s, sq) in zip(ENERGY_SIDES, totals, strict=True):
            if n == 0:
                continue
            mean = s / n
            out[f"train_energy_{side}"] = mean
            out[f"train_energy_{side}_std"] = max(sq / n - mean * mean, 0.0) ** 0.5
        return out

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


def _logits_of(batch: Batch, side: str) -> torch.Tensor | None:
    """The logits the step computed for ``side``; without an attack the adversarial side is the clean one."""
    if side == "adv" and batch.x_adv is batch.x:
        side = "clean"
    return batch._logits.get(side)
