"""Batches of a dataset that lives on the device: the hot path of training.

:class:`DeviceLoader` copies the uint8 images to the device once; each batch is then an
index gather, an optional crop-and-flip gather and a conversion to float, all on the
device, with no worker processes. Order and augmentation depend only on
``(seed, epoch)``: every epoch draws its permutation and its crop offsets from a CPU
``torch.Generator`` seeded from those two numbers, so a resumed run sees exactly the
batches an uninterrupted run would have, and all ranks of a distributed run agree on
the permutation they split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from energyat_core.data.augment import crop_flip, draw_crop_flip
from energyat_core.errors import DataError

PADDING = 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch: seeded from a hash of (seed, epoch), so no two pairs collide."""
    digest = hashlib.sha256(f"energyat-loader:{seed}:{epoch}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


class ShardedEpochs:
    """The order of one epoch and how it is split over ranks and batches, from ``(seed, epoch)`` alone.

    Shared by :class:`DeviceLoader` and :class:`~energyat_core.data.stream.StreamingLoader`,
    so that both serve the same images, crops and flips in the same batches.
    """

    def _plan(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        drop_last: bool,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device | str,
        channels_last: bool,
    ) -> None:
        """Check and store the settings of the split (called by the loaders' ``__init__``)."""
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


class DeviceLoader(ShardedEpochs):
    """Iterates (x, y) batches of uint8 images held on ``device``; x comes out float32 in [0, 1].

    With ``world_size > 1`` every rank takes every ``world_size``-th entry of the epoch's
    permutation (the same on all ranks). When the number of images does not divide
    evenly, the permutation is padded by wrapping around (or cut with ``drop_last``) so
    that every rank gets the same number of images and batches.
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
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
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise DataError(
                f"DeviceLoader needs uint8 images [N, C, H, W], got {x_uint8.dtype} {tuple(x_uint8.shape)}",
                "pass ImageData.train_x / test_x as they are",
            )
        if y.dim() != 1 or y.shape[0] != x_uint8.shape[0]:
            raise DataError(
                f"DeviceLoader got {x_uint8.shape[0]} images but labels of shape {tuple(y.shape)}",
                "pass one label per image",
            )
        self._plan(
            x_uint8.shape[0],
            batch_size,
            shuffle=shuffle,
            augment=augment,
            drop_last=drop_last,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            channels_last=channels_last,
        )
        self.x = x_uint8.to(self.device)
        self.y = y.to(device=self.device, dtype=torch.int64)

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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch 0 (use :meth:`epoch` during training)."""
        return self.epoch(0)
