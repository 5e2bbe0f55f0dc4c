"""Images in class folders: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``.

Class names sorted alphabetically give the label order; train and test must hold the
same classes. Every image is decoded with Pillow to RGB (greyscale and palette images
are converted, an alpha channel is dropped) and optionally resized to ``image_size``
squared. The decoded arrays are cached (see :mod:`energyat_core.data.cache`) under a key
made of the folder, the name, size and modification time of every file, and
``image_size``, so a second load takes a fraction of a second and any change to the
files is picked up. The normalisation statistics are the per-channel mean and standard
deviation of the training images.

With ``stream`` on (for folders too large for memory, e.g. ImageNet-sized ones) the
training images are not decoded at load time: :class:`ImageFiles` lists them, and
DataLoader workers decode each batch anew every epoch (see
:class:`energyat_core.data.stream.StreamingLoader`). The test images are still decoded
into memory. The statistics then come from an evenly spaced sample of at most
:data:`STREAM_STATS_SAMPLE` training images, and only those statistics, a few sample
images and the test split are cached.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from energyat_core.components import Dataset
from energyat_core.options import option
from energyat_core.data.cache import cache_key, cache_path, load_arrays, save_arrays
from energyat_core.data.image_data import ImageData
from energyat_core.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
LAYOUT = "PATH/train/<class>/*.png and PATH/test/<class>/*.png"
#: bump when the decoding changes, so that old cache files are not used
CACHE_VERSION = 2  # 2: files in a fixed shuffled order
#: below this many files decoding in the main process is faster than starting workers
PARALLEL_MIN_FILES = 4000
#: with ``stream``: training images (evenly spaced over the sorted list) that the mean and std are computed from
STREAM_STATS_SAMPLE = 2048
#: with ``stream``: decoded training images kept in ``ImageData.train_x`` (image shape, validation)
STREAM_PROBE = 8


def is_imagefolder(path: str | os.PathLike) -> bool:
    """True if ``path`` has ``train/`` and ``test/`` subfolders that each hold class folders."""
    root = Path(path)
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir() or not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder)):
            return False
    return True


def list_split(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (file, label) pairs of ``root/split``, in a fixed shuffled order; DataError if bad."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has no {split}/ subfolder", f"lay the images out as {LAYOUT}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} holds no class folders", f"lay the images out as {LAYOUT}")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        names = sorted(
            e.name
            for e in os.scandir(class_dir)
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        if not names:
            raise DataError(
                f"class folder {class_dir} holds no image files",
                f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder from train/ and test/",
            )
        files.extend((class_dir / n, label) for n in names)
    # a fixed interleaving of the classes (seed 0, the same on every machine): the first N
    # images of a split -- evaluation's --n / --eval-n, --max-train -- are then a random,
    # roughly class-balanced sample rather than the first classes only
    order = np.random.default_rng(0).permutation(len(files))
    return classes, [files[i] for i in order]


def file_summary(root: Path, files: list[tuple[Path, int]]) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime in ns) of every file: what the cache key depends on."""
    out = []
    for path, _ in files:
        st = path.stat()
        out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def decode_file(path: Path, image_size: int | None) -> np.ndarray:
    """One image as a uint8 array (H, W, 3); DataError naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"cannot decode image file {path} ({reason})", "remove or replace the file") from None


def _decode_chunk(paths: list[Path], image_size: int | None) -> list[np.ndarray] | DataError:
    """Decode ``paths`` in a worker; a DataError is returned (not raised) to keep its message."""
    try:
        return [decode_file(p, image_size) for p in paths]
    except DataError as err:
        return err


def decode_images(paths: list[Path], image_size: int | None, workers: int = 0) -> np.ndarray:
    """Decode ``paths`` into one uint8 array (N, H, W, 3), using ``workers`` processes (0: per core).

    All images must come out the same size: DataError naming two files that differ
    otherwise (set ``image_size`` to resize them).
    """
    if workers <= 0:
        workers = min(8, os.cpu_count() or 1)
    if workers > 1 and len(paths) >= PARALLEL_MIN_FILES:
        size = -(-len(paths) // (4 * workers))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_decode_chunk, chunks, [image_size] * len(chunks)))
        arrays: list[np.ndarray] = []
        for res in results:
            if isinstance(res, DataError):
                raise DataError(res.problem, res.fix)
            arrays.extend(res)
    else:
        arrays = [decode_file(p, image_size) for p in paths]
    shape = arrays[0].shape
    for path, arr in zip(paths, arrays, strict=True):
        if arr.shape != shape:
            raise DataError(
                f"images have different sizes ({shape[1]}x{shape[0]} in {paths[0]}, {arr.shape[1]}x{arr.shape[0]} "
                f"in {path})",
                "set image_size to resize them all, e.g. --set dataset.image_size=32",
            )
    return np.stack(arrays)


class ImageFiles(torch.utils.data.Dataset):
    """Training images left on disk: ``files[i]`` decodes image ``i`` to a uint8 tensor (C, H, W).

    Picklable and small (the relative file names are one numpy bytes array, not a list
    of Python strings), so DataLoader workers can hold it without copying the list of
    a million-file folder page by page. ``shape`` is the (C, H, W) every image must
    decode to; a file of another size raises a :class:`DataError` naming it. ``workers``
    is the number of DataLoader worker processes asked for (0: one per CPU core, up to 8).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: np.ndarray,
        image_size: int | None,
        shape: tuple[int, int, int],
        workers: int = 0,
    ) -> None:
        self.root = str(root)
        self.names = names  # bytes [N]: paths relative to root, as os.fsencode writes them
        self.image_size = image_size
        self.shape = shape
        self.workers = workers

    @classmethod
    def from_paths(
        cls, root: Path, paths: list[Path], image_size: int | None, shape: tuple[int, int, int], workers: int = 0
    ) -> ImageFiles:
        names = np.array([os.fsencode(p.relative_to(root).as_posix()) for p in paths], dtype=np.bytes_)
        return cls(root, names, image_size, shape, workers)

    def __len__(self) -> int:
        return int(self.names.shape[0])

    def path(self, i: int) -> Path:
        return Path(self.root) / os.fsdecode(bytes(self.names[i]))

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.path(i)
        arr = decode_file(path, self.image_size)
        shape = (arr.shape[2], arr.shape[0], arr.shape[1])
        if shape != self.shape:
            c, h, w = self.shape
            raise DataError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]}, the other training images are {w}x{h}",
                "set image_size to resize them all, e.g. --set dataset.image_size=224",
            )
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def subset(self, n: int) -> ImageFiles:
        """The first ``n`` files (all of them if ``n`` is larger)."""
        return ImageFiles(self.root, self.names[:n], self.image_size, self.shape, self.workers)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files under {self.root!r})"


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


class ImageFolder(Dataset):
    """Your own images, one folder per class: PATH/train/<class>/* and PATH/test/<class>/*."""

    @dataclass
    class Config:
        path: str = option("", "folder holding train/<class>/ and test/<class>/ (--dataset imagefolder:PATH)")
        image_size: int | None = option(None, "resize every image to this side length (None: keep; sizes must agree)")
        workers: int = option(
            0,
            "processes that decode the images, with stream: DataLoader workers per rank (0: one per CPU core, up to 8)",
        )
        cache: bool = option(True, "cache the decoded images (ENERGYAT_CACHE_DIR, default ~/.cache/energyat/cache)")
        stream: bool = option(
            False,
            "decode the training images in DataLoader workers every epoch instead of holding them in memory "
            "(folders larger than RAM or GPU memory); the test images are still loaded",
        )

        def __post_init__(self):
            if self.image_size is not None and self.image_size < 1:
                raise ValueError(f"image_size must be a positive number of pixels, got {self.image_size}")

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
        cfg = self.config
        if not str(path):
            raise DataError("imagefolder needs a folder", f"pass --dataset imagefolder:PATH with {LAYOUT}")
        root = Path(os.path.expanduser(str(path))).resolve()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist", f"pass --dataset imagefolder:PATH with {LAYOUT}")
        train_classes, train_files = list_split(root, "train")
        test_classes, test_files = list_split(root, "test")
        if train_classes != test_classes:
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            raise DataError(
                f"train/ and test/ of {root} have different classes "
                f"(only in train: {', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})",
                "give train/ and test/ the same class folders",
            )
        if cfg.stream:
            return self._load_streamed(root, name, train_classes, train_files, test_files, mean, std)

        def decode() -> dict[str, np.ndarray]:
            train_x, test_x = self._decode_splits(root, [p for p, _ in train_files], test_files)
            data_mean, data_std = channel_stats(train_x)
            return {
                "train_x": train_x,
                "train_y": np.array([label for _, label in train_files], dtype=np.int64),
                "test_x": test_x,
                "test_y": np.array([label for _, label in test_files], dtype=np.int64),
                "classes": np.array(train_classes),
                "mean": np.array(data_mean, dtype=np.float64),
                "std": np.array(data_std, dtype=np.float64),
            }

        arrays = self._cached(root, (), train_files, test_files, decode)
        classes = [str(c) for c in arrays["classes"].tolist()]
        return ImageData(
            train_x=torch.from_numpy(arrays["train_x"]),
            train_y=torch.from_numpy(arrays["train_y"]),
            test_x=torch.from_numpy(arrays["test_x"]),
            test_y=torch.from_numpy(arrays["test_y"]),
            num_classes=len(classes),
            classes=classes,
            mean=tuple(mean) if mean is not None else tuple(float(v) for v in arrays["mean"]),
            std=tuple(std) if std is not None else tuple(float(v) for v in arrays["std"]),
            name=name,
        ).validate()

    def _cached(
        self,
        root: Path,
        key_extra: tuple,
        train_files: list[tuple[Path, int]],
        test_files: list[tuple[Path, int]],
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
        path = cache_path("imagefolder", key)
        arrays = load_arrays(path)
        if arrays is None:
            arrays = decode()
            save_arrays(path, arrays)
        return arrays

    def _decode_splits(
        self, root: Path, train_paths: list[Path], test_files: list[tuple[Path, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
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

    def _load_streamed(
        self,
        root: Path,
        name: str,
        classes: list[str],
        train_files: list[tuple[Path, int]],
        test_files: list[tuple[Path, int]],
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ) -> ImageData:
        """``load_folder`` with ``stream``: list the training files, decode a sample and the test split."""
        cfg = self.config
        train_paths = [p for p, _ in train_files]

        def decode() -> dict[str, np.ndarray]:
            n = len(train_paths)
            picks = np.unique(np.linspace(0, n - 1, num=min(n, STREAM_STATS_SAMPLE)).round().astype(np.int64))
            sample, test_x = self._decode_splits(root, [train_paths[i] for i in picks], test_files)
            data_mean, data_std = channel_stats(sample)
            return {
                "probe": sample[:STREAM_PROBE].copy(),
                "test_x": test_x,
                "test_y": np.array([label for _, label in test_files], dtype=np.int64),
                "classes": np.array(classes),
                "mean": np.array(data_mean, dtype=np.float64),
                "std": np.array(data_std, dtype=np.float64),
            }

        key_extra = ("stream", STREAM_STATS_SAMPLE, STREAM_PROBE)
        arrays = self._cached(root, key_extra, train_files, test_files, decode)
        probe = torch.from_numpy(arrays["probe"])
        c, h, w = (int(s) for s in probe.shape[1:])
        files = ImageFiles.from_paths(root, train_paths, cfg.image_size, (c, h, w), cfg.workers)
        return ImageData(
            train_x=probe,
            train_y=torch.tensor([label for _, label in train_files], dtype=torch.int64),
            test_x=torch.from_numpy(arrays["test_x"]),
            test_y=torch.from_numpy(arrays["test_y"]),
            num_classes=len(classes),
            classes=classes,
            mean=tuple(mean) if mean is not None else tuple(float(v) for v in arrays["mean"]),
            std=tuple(std) if std is not None else tuple(float(v) for v in arrays["std"]),
            name=name,
            train_files=files,
        ).validate()
