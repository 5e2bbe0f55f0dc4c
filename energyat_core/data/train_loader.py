"""The training loader of a dataset: :func:`make_loader` picks the one that suits its :class:`ImageData`."""

from __future__ import annotations

from typing import Any

import torch

from energyat_core.data.device_loader import DeviceLoader
from energyat_core.data.image_data import ImageData
from energyat_core.data.streaming_loader import StreamingLoader, auto_workers


def make_loader(
    data: ImageData, batch_size: int, device: torch.device | str, **plan: Any
) -> DeviceLoader | StreamingLoader:
    """The training loader of ``data``: :class:`StreamingLoader` if its images stay on disk, else :class:`DeviceLoader`.

    ``plan`` are the keyword options both loaders take (shuffle, augment, drop_last,
    seed, rank, world_size, channels_last).
    """
    files = data.train_files
    if files is None:
        return DeviceLoader(data.train_x, data.train_y, batch_size, device, **plan)
    workers = files.workers if files.workers > 0 else auto_workers()
    return StreamingLoader(files, data.train_y, batch_size, device, workers=workers, **plan)
