"""CIFAR-10, CIFAR-100 and SVHN, read (and downloaded if needed) through torchvision.

The root folder is ``data_dir`` (``--data-dir``) or, without one, ``$ENERGYAT_DATA_DIR``
or ``~/.cache/energyat/data``. A ``data_dir`` laid out as an image folder
(``train/<class>/*`` and ``test/<class>/*``, e.g. the JPEG copy of CIFAR-10 shipped for
offline machines) is read as such, with the dataset's usual statistics; see
:class:`energyat_core.data.ImageFolder`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from energyat_core.components import Dataset
from energyat_core.data.cache import default_data_dir
from energyat_core.data.image_data import ImageData
from energyat_core.data.image_files import is_imagefolder
from energyat_core.data.imagefolder import ImageFolder
from energyat_core.errors import DataError
from energyat_core.options import option


def short_reason(err: BaseException) -> str:
    """The first line of an exception's message (at most 100 characters), or its type."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= 100 else text[:97] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class TorchvisionDataset(Dataset):
    """Base of the datasets read through ``torchvision.datasets``."""

    title: ClassVar[str] = ""  # as a person writes it, e.g. "CIFAR-10"
    dataset_name: ClassVar[str] = ""  # registered name, e.g. "cifar10"
    torchvision_class: ClassVar[str] = ""  # the class of torchvision.datasets that reads it, e.g. "CIFAR10"
    folder: ClassVar[str] = ""  # what torchvision keeps under the root
    num_classes: ClassVar[int] = 10
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()

    @dataclass
    class Config:
        download: bool = option(True, "download the dataset into the data folder if it is not there yet")

    def load(self, data_dir: str | None) -> ImageData:
        root = Path(os.path.expanduser(data_dir)) if data_dir else default_data_dir()
        if root.is_dir() and is_imagefolder(root):
            return self.load_imagefolder(root)
        # accept the folder torchvision extracts as well as the one that holds it
        if root.name == self.folder and root.is_dir():
            root = root.parent
        if not self.config.download and not (root / self.folder).exists():
            raise DataError(
                f"{self.title} not found in {root} (download is off)",
                f"pass --data-dir pointing at a folder with {self.folder}, set dataset.download=true, "
                "or use --dataset imagefolder:PATH",
            )
        try:
            train = self.open_split(root, train=True)
            test = self.open_split(root, train=False)
        except DataError:
            raise
        except ImportError as err:
            raise DataError(f"reading {self.title} needs {err.name or 'a missing package'}", "pip install it") from None
        except Exception as err:  # torchvision raises RuntimeError, network errors, OSError...
            happened = "could not be downloaded" if self.config.download else "could not be read"
            raise DataError(
                f"{self.title} not found in {root} and {happened} ({short_reason(err)})",
                f"pass --data-dir pointing at a folder with {self.folder}, or use --dataset imagefolder:PATH",
            ) from None
        train_x, train_y = self.arrays(train)
        test_x, test_y = self.arrays(test)
        return ImageData(
            train_x=train_x,
            train_y=train_y,
            test_x=test_x,
            test_y=test_y,
            num_classes=self.num_classes,
            classes=self.class_names(train),
            mean=self.mean,
            std=self.std,
            name=self.dataset_name,
        ).validate()

    def load_imagefolder(self, root: Path) -> ImageData:
        """Read an image-folder copy of this dataset (32x32 images, the usual statistics)."""
        data = ImageFolder(ImageFolder.Config(path=str(root), image_size=32)).load_folder(
            root, name=self.dataset_name, mean=self.mean, std=self.std
        )
        if data.num_classes != self.num_classes:
            raise DataError(
                f"{root} looks like an image folder but has {data.num_classes} classes, "
                f"{self.title} has {self.num_classes}",
                f"point --data-dir at a copy of {self.title}, or use --dataset imagefolder:{root}",
            )
        return data

    # what differs between the torchvision classes beyond the class attributes above

    def open_split(self, root: Path, train: bool) -> Any:
        """The torchvision dataset of one split (downloading it if that is allowed)."""
        import torchvision

        read = getattr(torchvision.datasets, self.torchvision_class)
        return read(str(root), train=train, download=self.config.download)

    def arrays(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) images and int64 labels of a torchvision CIFAR dataset."""
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
        return x, y

    def class_names(self, ds: Any) -> list[str]:
        return [str(c) for c in ds.classes]


class CIFAR10(TorchvisionDataset):
    """CIFAR-10: 50,000 + 10,000 colour images of 32x32 in 10 classes (torchvision download)."""

    title, dataset_name, num_classes = "CIFAR-10", "cifar10", 10
    torchvision_class, folder = "CIFAR10", "cifar-10-batches-py"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR100(TorchvisionDataset):
    """CIFAR-100: 50,000 + 10,000 colour images of 32x32 in 100 classes (torchvision download)."""

    title, dataset_name, num_classes = "CIFAR-100", "cifar100", 100
    torchvision_class, folder = "CIFAR100", "cifar-100-python"
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class SVHN(TorchvisionDataset):
    """SVHN: 73,257 + 26,032 colour images of house-number digits, 32x32 (torchvision download; needs scipy)."""

    title, dataset_name, num_classes = "SVHN", "svhn", 10
    torchvision_class, folder = "SVHN", "train_32x32.mat"
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

    def load(self, data_dir: str | None) -> ImageData:
        root = Path(os.path.expanduser(data_dir)) if data_dir else default_data_dir()
        if not (root.is_dir() and is_imagefolder(root)):
            try:
                import scipy.io  # noqa: F401 - torchvision reads SVHN's .mat files with it
            except ImportError:
                raise DataError("reading SVHN needs scipy, which is not installed", "pip install scipy") from None
        return super().load(data_dir)

    def open_split(self, root: Path, train: bool) -> Any:
        import torchvision

        return torchvision.datasets.SVHN(str(root), split="train" if train else "test", download=self.config.download)

    def arrays(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data))  # already (N, 3, 32, 32)
        y = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64))
        return x, y

    def class_names(self, ds: Any) -> list[str]:
        return [str(k) for k in range(10)]
