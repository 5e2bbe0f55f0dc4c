"""Image files in class folders: listing them, decoding them, and :class:`ImageFiles`.

The layout is ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``; class names sorted
alphabetically give the label order. Every image is decoded with Pillow to RGB
(greyscale and palette images are converted, an alpha channel is dropped) and optionally
resized to ``image_size`` squared: all at once into one array (:func:`decode_images`,
in worker processes for large folders), or one by one in DataLoader workers
(:class:`ImageFiles`, for folders too large for memory). The dataset component that
uses them is :class:`energyat_core.data.imagefolder.ImageFolder`.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from energyat_core.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
LAYOUT = "PATH/train/<class>/*.png and PATH/test/<class>/*.png"
#: below this many files decoding in the main process is faster than starting workers
PARALLEL_MIN_FILES = 4000


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
    """One image as a uint8 array (H, W, 3); DataError naming the file if it cannot be read.

    16-bit images are read at full depth and scaled to 8 bits (``round(v * 255 / 65535)``),
    not clipped; images larger than Pillow's ``MAX_IMAGE_PIXELS`` (decompression bombs)
    and floating-point or 32-bit images are refused.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rgb = _to_rgb(im, path)
                if image_size is not None and rgb.size != (image_size, image_size):
                    rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"image file {path} claims more than {Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb?)",
            "remove the file, or shrink the image if it is genuine",
        ) from None
    except DataError:
        raise
    except Exception as err:  # a damaged or hostile file can make any decoder fail in any way
        if isinstance(err, UnidentifiedImageError):
            reason = "not an image format Pillow reads"  # its message only repeats the path
        else:
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"cannot decode image file {path} ({reason})", "remove or replace the file") from None


#: Pillow modes of one 16-bit channel (PNG, TIFF); ``I`` (32-bit) is read as 16-bit when its values fit
MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_rgb(im: Any, path: Path) -> Any:
    """``im`` as an 8-bit RGB Pillow image; 16-bit greyscale scaled, not clipped (``convert`` would clip)."""
    from PIL import Image

    if im.mode not in (*MODES_16BIT, "I", "F"):
        return im.convert("RGB")
    values = np.asarray(im)
    if im.mode == "F" or values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        kind = "floating-point" if im.mode == "F" else "32-bit"
        raise DataError(
            f"image file {path} has {kind} pixels (Pillow mode {im.mode}), which have no fixed range",
            "convert it to an 8- or 16-bit image",
        )
    grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))


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
