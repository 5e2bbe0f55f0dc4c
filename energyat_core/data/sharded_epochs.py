"""The plan of each training epoch, shared by both loaders: order, shard of this rank, crops and flips.

Order and augmentation depend only on ``(seed, epoch)``: every epoch draws its
permutation and its crop offsets from a CPU ``torch.Generator`` seeded from those two
numbers, so a resumed run sees exactly the batches an uninterrupted run would have, and
all ranks of a distributed run agree on the permutation they split.
:class:`~energyat_core.data.device_loader.DeviceLoader` and
:class:`~energyat_core.data.streaming_loader.StreamingLoader` both plan their epochs
with :class:`ShardedEpochs`, so that they serve the same images, crops and flips in the
same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from energyat_core.data.augment import crop_flip, draw_crop_flip
from energyat_core.data.seeds import seeded_generator
from energyat_core.errors import DataError

PADDING = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch: seeded from a hash of (seed, epoch), so no two pairs collide."""
    return seeded_generator("energyat-loader", seed, epoch)


class ShardedEpochs:
    """The order of one epoch and how it is split over ranks and batches, from ``(seed, epoch)`` alone.

    ``n`` images with labels ``y`` (moved to ``device`` as int64). With ``world_size > 1``
    every rank takes every ``world_size``-th entry of the epoch's permutation (the same on
    all ranks). When the number of images does not divide evenly, the permutation is
    padded by wrapping around (or cut with ``drop_last``) so that every rank gets the same
    number of images and batches. ``augment`` adds a random crop (``PADDING`` pixels) and
    flip per image; ``channels_last`` sets the memory format of the batches.
    """

    def __init__(
        self,
        n: int,
        y: torch.Tensor,
        batch_size: int,
        device: torch.device | str,
        *,
        shuffle: bool = True,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if y.dim() != 1 or y.shape[0] != n:
            raise DataError(
                f"{type(self).__name__} got {n} images but labels of shape {tuple(y.shape)}", "pass one label per image"
            )
        if batch_size < 1:
            raise DataError(f"batch size {batch_size} is not positive", "use a batch size of at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} does not fit world size {world_size}", "use 0 <= rank < world_size")
        if n < world_size:
            raise DataError(f"{n} images cannot be split over {world_size} processes", "use more images")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = n
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.y = y.to(device=self.device, dtype=torch.int64)

    @property
    def per_rank(self) -> int:
        """Images this rank sees per epoch."""
        n, w = self.num_samples, self.world_size
        return n // w if self.drop_last else -(-n // w)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        m = self.per_rank
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def epoch_indices(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's image indices for ``epoch`` and, with augmentation, their crop offsets and flips (CPU)."""
        gen = epoch_generator(self.seed, epoch)
        n, w = self.num_samples, self.world_size
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        offsets: torch.Tensor | None = None
        flips: torch.Tensor | None = None
        if self.augment:
            # drawn for the whole epoch in permutation order, so that all ranks draw alike
            offsets, flips = draw_crop_flip(n, PADDING, gen)
        total = self.per_rank * w
        position = torch.arange(total) % n  # wraps around when padding, cut when drop_last
        position = position[self.rank :: w]
        idx = order[position]
        if offsets is not None and flips is not None:
            return idx, offsets[position], flips[position]
        return idx, None, None

    def augmentation_on_device(
        self, offsets: torch.Tensor | None, flips: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The epoch's crop offsets and flips (from :meth:`epoch_indices`) on the device; None without."""
        if offsets is None or flips is None:
            return None
        return offsets.to(self.device), flips.to(self.device)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (skipping the first ``start_batch``), as (float x, int64 y) on the device."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch 0 (use :meth:`epoch` during training)."""
        return self.epoch(0)

    def model_input(
        self, xb: torch.Tensor, sl: slice, augmentation: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """A uint8 batch on the device as the model takes it: cropped and flipped (entries ``sl`` of
        the epoch's augmentation), float32 in [0, 1], channels_last if asked."""
        if augmentation is not None:
            offsets, flips = augmentation
            xb = crop_flip(xb, offsets[sl], flips[sl], PADDING)
        xb = xb.float().div_(255)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb
