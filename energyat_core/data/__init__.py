"""Datasets and how their batches reach the device.

Every dataset loads into an :class:`ImageData` (uint8 images on the CPU, labels, class
names and the normalisation the model applies); :class:`DeviceLoader` serves its batches
from the device, or :class:`StreamingLoader` decodes them in DataLoader workers when the
training images stay on disk (``imagefolder`` with ``stream``); :func:`make_loader`
picks one. Built-in datasets: :class:`Synthetic` (the default; needs no files),
:class:`CIFAR10`, :class:`CIFAR100`, :class:`SVHN` and :class:`ImageFolder`.
"""

from energyat_core.data.augment import crop_flip, draw_crop_flip, random_crop_flip
from energyat_core.data.cache import cache_dir, default_data_dir
from energyat_core.data.image_data import ImageData
from energyat_core.data.imagefolder import ImageFiles, ImageFolder, is_imagefolder
from energyat_core.data.loader import DeviceLoader
from energyat_core.data.stream import StreamingLoader, make_loader
from energyat_core.data.synthetic import Synthetic
from energyat_core.data.torchvision_sets import CIFAR10, CIFAR100, SVHN

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
