"""The per-epoch evaluation of a training run: the held-out subset, shared out over ranks.

Each rank evaluates its share of the held-out subset (:func:`~energyat_core.evaluation.quick_eval`:
clean and PGD accuracy, energies) with one set of BatchNorm statistics; under torchrun the
figures are averaged over ranks, weighted by the images each evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from energyat_core import distributed
from energyat_core.distributed import DistInfo
from energyat_core.evaluation import quick_eval
from energyat_core.run_config import RunConfig


def held_out_eval(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: RunConfig,
    dist: DistInfo,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """Clean/PGD accuracy and energies of ``model`` on this rank's ``x``, ``y``, averaged over ranks."""
    distributed.average_buffers(model, dist)  # one set of BatchNorm statistics
    local = quick_eval(
        model,
        x,
        y,
        eps=cfg.threat.eps,
        norm=cfg.norm,
        steps=cfg.eval_steps,
        batch_size=max(cfg.batch_size, 256),
        autocast=autocast,
    )
    if not dist.enabled:
        return local
    n = float(len(y))
    sums = torch.tensor([v * n for v in local.values()] + [n], dtype=torch.float64, device=x.device)
    *totals, count = distributed.all_reduce_sum(sums, dist).tolist()
    return {k: v / max(count, 1.0) for k, v in zip(local, totals, strict=True)}
