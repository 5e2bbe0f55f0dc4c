"""Batches of a dataset that lives on the device: the hot path of training.

:class:`DeviceLoader` copies the uint8 images to the device once; each batch is then an
index gather, an optional crop-and-flip gather and a conversion to float, all on the
device, with no worker processes. The order, shards and augmentation of each epoch come
from :class:`~energyat_core.data.sharded_epochs.ShardedEpochs` and depend only on
``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from energyat_core.data.sharded_epochs import ShardedEpochs
from energyat_core.errors import DataError


class DeviceLoader(ShardedEpochs):
    """Iterates (x, y) batches of uint8 images held on ``device``; x comes out float32 in [0, 1].

    ``plan`` are the keyword options of :class:`ShardedEpochs` (shuffle, augment,
    drop_last, seed, rank, world_size, channels_last): batching, sharding over ranks and
    augmentation.
    """

    def __init__(
        self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str, **plan: Any
    ) -> None:
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise DataError(
                f"DeviceLoader needs uint8 images [N, C, H, W], got {x_uint8.dtype} {tuple(x_uint8.shape)}",
                "pass ImageData.train_x / test_x as they are",
            )
        super().__init__(x_uint8.shape[0], y, batch_size, device, **plan)
        self.x = x_uint8.to(self.device)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (skipping the first ``start_batch``), as (float x, int64 y) on the device."""
        idx, offsets, flips = self.epoch_indices(epoch)
        idx = idx.to(self.device)
        augmentation = self.augmentation_on_device(offsets, flips)
        bs = self.batch_size
        for b in range(start_batch, len(self)):
            sl = slice(b * bs, (b + 1) * bs)
            batch_idx = idx[sl]
            yield self.model_input(self.x[batch_idx], sl, augmentation), self.y[batch_idx]
