"""The ``imagefolder`` dataset: your own images, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``.

Train and test must hold the same classes; listing and decoding the files is
:mod:`energyat_core.data.image_files`. The decoded arrays are cached (see
:mod:`energyat_core.data.cache`) under a key made of the folder, the name, size and
modification time of every file, and ``image_size``, so a second load takes a fraction
of a second and any change to the files is picked up. The normalisation statistics are
the per-channel mean and standard deviation of the training images.

With ``stream`` on (for folders too large for memory, e.g. ImageNet-sized ones) the
training images are not decoded at load time: :class:`ImageFiles` lists them, and
DataLoader workers decode each batch anew every epoch (see
:class:`energyat_core.data.streaming_loader.StreamingLoader`). The test images are still
decoded into memory. The statistics then come from an evenly spaced sample of at most
:data:`STREAM_STATS_SAMPLE` training images, and only those statistics, a few sample
images and the test split are cached.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from energyat_core.components import Dataset
from energyat_core.data.cache import cache_key, cached_arrays
from energyat_core.data.image_data import ImageData
from energyat_core.data.image_files import LAYOUT, ImageFiles, decode_images, file_summary, list_split
from energyat_core.errors import DataError
from energyat_core.options import option

#: bump when the decoding changes, so that old cache files are not used
CACHE_VERSION = 2  # 2: files in a fixed shuffled order
#: with ``stream``: training images (evenly spaced over the sorted list) that the mean and std are computed from
STREAM_STATS_SAMPLE = 2048
#: with ``stream``: decoded training images kept in ``ImageData.train_x`` (image shape, validation)
STREAM_PROBE = 8

Files = list[tuple[Path, int]]  # (file, label) pairs of a split


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    c = x.shape[1]
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk].astype(np.float64)
        total += part.sum(axis=(0, 2, 3))
        total_sq += np.square(part).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), 1.0)  # a constant channel would divide by zero
    return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in std)


def labels(files: Files) -> np.ndarray:
    """The labels of ``(file, label)`` pairs, int64."""
    return np.array([label for _, label in files], dtype=np.int64)


class ImageFolder(Dataset):
    """Your own images, one folder per class: PATH/train/<class>/* and PATH/test/<class>/*."""

    @dataclass
    class Config:
        path: str = option("", "folder holding train/<class>/ and test/<class>/ (--dataset imagefolder:PATH)")
        image_size: int | None = option(
            None, "resize every image to this side length (None: keep; sizes must agree)", ge=1
        )
        workers: int = option(
            0,
            "processes that decode the images, with stream: DataLoader workers per rank (0: one per CPU core, up to 8)",
            ge=0,
        )
        cache: bool = option(True, "cache the decoded images (ENERGYAT_CACHE_DIR, default ~/.cache/energyat/cache)")
        stream: bool = option(
            False,
            "decode the training images in DataLoader workers every epoch instead of holding them in memory "
            "(folders larger than RAM or GPU memory); the test images are still loaded",
        )

    def load(self, data_dir: str | None) -> ImageData:
        return self.load_folder(self.config.path or data_dir or "", name="imagefolder")

    def load_folder(
        self,
        path: str | os.PathLike,
        name: str,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> ImageData:
        """Load the folder at ``path``; ``mean``/``std`` replace the computed statistics if given."""
        if not str(path):
            raise DataError("imagefolder needs a folder", f"pass --dataset imagefolder:PATH with {LAYOUT}")
        root = Path(os.path.expanduser(str(path))).resolve()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist", f"pass --dataset imagefolder:PATH with {LAYOUT}")
        classes, train_files = list_split(root, "train")
        if len(classes) < 2:
            raise DataError(
                f"{root / 'train'} holds one class folder ('{classes[0]}'); a classifier needs at least two",
                f"add a folder of images for every other class under train/ and test/ ({LAYOUT})",
            )
        test_classes, test_files = list_split(root, "test")
        if classes != test_classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DataError(
                f"train/ and test/ of {root} have different classes "
                f"(only in train: {', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})",
                "give train/ and test/ the same class folders",
            )
        if self.config.stream:
            arrays = self._streamed_arrays(root, classes, train_files, test_files)
            probe = torch.from_numpy(arrays["probe"])
            c, h, w = (int(s) for s in probe.shape[1:])
            files = ImageFiles.from_paths(
                root, [p for p, _ in train_files], self.config.image_size, (c, h, w), self.config.workers
            )
            train_x, train_y = probe, torch.from_numpy(labels(train_files))
        else:
            arrays = self._arrays(root, classes, train_files, test_files)
            files = None
            train_x, train_y = torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"])
        return ImageData(
            train_x=train_x,
            train_y=train_y,
            test_x=torch.from_numpy(arrays["test_x"]),
            test_y=torch.from_numpy(arrays["test_y"]),
            num_classes=len(classes),
            classes=list(classes),
            mean=tuple(mean) if mean is not None else tuple(float(v) for v in arrays["mean"]),
            std=tuple(std) if std is not None else tuple(float(v) for v in arrays["std"]),
            name=name,
            train_files=files,
        ).validate()

    def _arrays(self, root: Path, classes: list[str], train_files: Files, test_files: Files) -> dict[str, np.ndarray]:
        """Every image decoded: train and test images, labels, class names and the statistics of the train images."""

        def decode() -> dict[str, np.ndarray]:
            train_x, test_x = self._decode_splits(root, [p for p, _ in train_files], test_files)
            return {
                "train_x": train_x,
                "train_y": labels(train_files),
                **self._test_and_stats(test_x, test_files, classes, train_x),
            }

        return self._cached(root, (), train_files, test_files, decode)

    def _streamed_arrays(
        self, root: Path, classes: list[str], train_files: Files, test_files: Files
    ) -> dict[str, np.ndarray]:
        """With ``stream``: a few train images (``probe``), the test split and statistics of a train sample."""

        def decode() -> dict[str, np.ndarray]:
            n = len(train_files)
            picks = np.unique(np.linspace(0, n - 1, num=min(n, STREAM_STATS_SAMPLE)).round().astype(np.int64))
            sample, test_x = self._decode_splits(root, [train_files[i][0] for i in picks], test_files)
            return {"probe": sample[:STREAM_PROBE].copy(), **self._test_and_stats(test_x, test_files, classes, sample)}

        key_extra = ("stream", STREAM_STATS_SAMPLE, STREAM_PROBE)
        return self._cached(root, key_extra, train_files, test_files, decode)

    @staticmethod
    def _test_and_stats(
        test_x: np.ndarray, test_files: Files, classes: list[str], stats_of: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The arrays both forms cache: the test split, the class names and the mean and std of ``stats_of``."""
        data_mean, data_std = channel_stats(stats_of)
        return {
            "test_x": test_x,
            "test_y": labels(test_files),
            "classes": np.array(classes),
            "mean": np.array(data_mean, dtype=np.float64),
            "std": np.array(data_std, dtype=np.float64),
        }

    def _cached(
        self,
        root: Path,
        key_extra: tuple,
        train_files: Files,
        test_files: Files,
        decode: Callable[[], dict[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """``decode()``'s arrays, read from the cache when the files are unchanged (and written there if not).

        The key: the cache version, ``key_extra``, the folder, ``image_size`` and the name,
        size and modification time of every file.
        """
        cfg = self.config
        if not cfg.cache:
            return decode()
        key = cache_key(
            CACHE_VERSION,
            *key_extra,
            str(root),
            cfg.image_size,
            file_summary(root, train_files),
            file_summary(root, test_files),
        )
        return cached_arrays("imagefolder", key, decode)

    def _decode_splits(self, root: Path, train_paths: list[Path], test_files: Files) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``train_paths`` and the test files to uint8 (N, C, H, W); DataError if their sizes differ."""
        cfg = self.config
        train_x = decode_images(train_paths, cfg.image_size, cfg.workers)
        test_x = decode_images([p for p, _ in test_files], cfg.image_size, cfg.workers)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"train images of {root} are {train_x.shape[2]}x{train_x.shape[1]} but test images are "
                f"{test_x.shape[2]}x{test_x.shape[1]}",
                "set image_size to resize them all, e.g. --set dataset.image_size=32",
            )
        return (
            np.ascontiguousarray(train_x.transpose(0, 3, 1, 2)),
            np.ascontiguousarray(test_x.transpose(0, 3, 1, 2)),
        )
