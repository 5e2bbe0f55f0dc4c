"""Batches of a dataset too large for memory: decoded by DataLoader workers every epoch.

:class:`StreamingLoader` serves the batches :class:`~energyat_core.data.DeviceLoader`
would serve for the same images, in the same order and with the same crops and flips:
both take their plan of the epoch (permutation, shard of this rank, crop offsets and
flips) from :class:`~energyat_core.data.sharded_epochs.ShardedEpochs`, which depends
only on ``(seed, epoch)``. The difference is where the pixels come from: a
``torch.utils.data.DataLoader`` whose workers decode the files of each batch (the
indices are handed to it batch by batch, so ``start_batch`` skips batches without
decoding them), into pinned memory on CUDA; the uint8 batch then goes to the device
with a non-blocking copy, and cropping, flipping and the conversion to float happen
there, as in :class:`DeviceLoader`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from energyat_core.data.sharded_epochs import ShardedEpochs
from energyat_core.errors import DataError, EnergyATError

#: DataLoader workers when the dataset asks for "one per CPU core" (workers=0)
MAX_AUTO_WORKERS = 8


@dataclass
class _Failure:
    """A user-facing error raised in a worker, carried back as a batch so that its message stays one line."""

    kind: type[EnergyATError]
    problem: str
    fix: str

    def raise_it(self) -> None:
        raise self.kind(self.problem, self.fix)


class _Guarded(torch.utils.data.Dataset):
    """``dataset[i]``, or a :class:`_Failure` where decoding raised an :class:`EnergyATError`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor | _Failure:
        try:
            return self.dataset[i]
        except EnergyATError as err:
            return _Failure(type(err), err.problem, err.fix)


def _collate(items: list[torch.Tensor | _Failure]) -> torch.Tensor | _Failure:
    """Stack uint8 images (C, H, W) into a batch (in shared memory inside a worker), or pass a failure on."""
    for item in items:
        if isinstance(item, _Failure):
            return item
    try:
        return default_collate(items)
    except RuntimeError as err:  # a dataset without a size check of its own
        reason = str(err).splitlines()[0][:120]
        return _Failure(DataError, f"images of one batch differ in size ({reason})", "set dataset.image_size")


class _EpochBatches:
    """The batch sampler of the DataLoader: the index lists of the current epoch, set before each pass."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingLoader(ShardedEpochs):
    """Iterates (x, y) batches of images decoded from ``dataset`` by ``workers`` DataLoader processes.

    ``dataset[i]`` must return image ``i`` as a uint8 tensor (C, H, W); ``y`` holds all
    labels. ``plan`` are the keyword options of :class:`ShardedEpochs` (shuffle, augment,
    drop_last, seed, rank, world_size, channels_last), as for :class:`DeviceLoader`, and
    the batches are equal to its batches for the same images. ``workers=0`` decodes in
    the main process.
    """

    def __init__(
        self,
        dataset: Any,
        y: torch.Tensor,
        batch_size: int,
        device: torch.device | str,
        *,
        workers: int = 0,
        **plan: Any,
    ) -> None:
        super().__init__(len(dataset), y, batch_size, device, **plan)
        if workers < 0:
            raise DataError(f"{workers} DataLoader workers", "use 0 (decode in the main process) or more")
        self.workers = workers
        self._sampler = _EpochBatches()
        self._loader = DataLoader(
            _Guarded(dataset),
            batch_sampler=self._sampler,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (skipping the first ``start_batch``), as (float x, int64 y) on the device."""
        idx, offsets, flips = self.epoch_indices(epoch)
        bs = self.batch_size
        batches = range(start_batch, len(self))
        self._sampler.batches = [idx[b * bs : (b + 1) * bs].tolist() for b in batches]
        idx = idx.to(self.device)
        augmentation = self.augmentation_on_device(offsets, flips)
        non_blocking = self.device.type == "cuda"
        finished = False
        try:
            for b, xb in zip(batches, self._loader, strict=True):
                if isinstance(xb, _Failure):
                    xb.raise_it()
                sl = slice(b * bs, (b + 1) * bs)
                yield self.model_input(xb.to(self.device, non_blocking=non_blocking), sl, augmentation), self.y[idx[sl]]
            finished = True
        finally:
            if not finished:  # an error or an abandoned epoch: stop the workers now rather than in the GC
                self.close()

    def close(self) -> None:
        """Stop the worker processes (the next epoch starts new ones).

        Persistent workers otherwise stop when the DataLoader's iterator is freed; if
        that happens inside the cyclic garbage collector (an exception's traceback
        keeps it alive), the queues may be finalised first and every worker then takes
        the DataLoader's 5 s join timeout to go.
        """
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._loader._iterator = None


def auto_workers() -> int:
    """DataLoader workers per process when the dataset says 0: one per CPU core, at most 8, at least 1.

    Under torchrun the cores of the machine are shared out over its ranks (``LOCAL_WORLD_SIZE``).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, cores // local_processes))
