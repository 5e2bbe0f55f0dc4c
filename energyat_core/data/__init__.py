"""Datasets and how their batches reach the device.

Every dataset loads into an :class:`ImageData` (uint8 images on the CPU, labels, class
names and the normalisation the model applies); :class:`DeviceLoader` serves its batches
from the device, or :class:`StreamingLoader` decodes them in DataLoader workers when the
training images stay on disk (``imagefolder`` with ``stream``); :func:`make_loader`
picks one. Built-in datasets: :class:`Synthetic` (the default; needs no files),
:class:`CIFAR10`, :class:`CIFAR100`, :class:`SVHN` and :class:`ImageFolder`.

Modules, one concern each: ``image_data`` (the in-memory form), ``synthetic``,
``torchvision_sets`` and ``imagefolder`` (the datasets), ``image_files`` (listing and
decoding image files), ``cache`` (data folders and the cache of decoded arrays),
``seeds`` (seeded random streams), ``sharded_epochs`` (the order, shards and
augmentation of an epoch), ``augment`` (crop and flip on the device), ``device_loader``
and ``streaming_loader`` (the two loaders) and ``train_loader`` (:func:`make_loader`).
"""

from energyat_core.data.augment import crop_flip, draw_crop_flip, random_crop_flip
from energyat_core.data.cache import cache_dir, default_data_dir
from energyat_core.data.device_loader import DeviceLoader
from energyat_core.data.image_data import ImageData
from energyat_core.data.image_files import ImageFiles, is_imagefolder
from energyat_core.data.imagefolder import ImageFolder
from energyat_core.data.streaming_loader import StreamingLoader
from energyat_core.data.synthetic import Synthetic
from energyat_core.data.torchvision_sets import CIFAR10, CIFAR100, SVHN
from energyat_core.data.train_loader import make_loader

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "SVHN",
    "DeviceLoader",
    "ImageData",
    "ImageFiles",
    "ImageFolder",
    "StreamingLoader",
    "Synthetic",
    "cache_dir",
    "crop_flip",
    "default_data_dir",
    "draw_crop_flip",
    "is_imagefolder",
    "make_loader",
    "random_crop_flip",
]
