"""The CIFAR-10 JPEG copy for the benchmarks: a class-balanced subset folder and its decoded arrays.

The tarball (``../shared/data/cifar10-jpeg.tar.gz`` next to the repository by default)
holds ``train/<class>/NNNN.jpg`` (5,000 per class) and ``test/<class>/NNNN.jpg`` (1,000
per class). :func:`balanced_folder` copies ``n_train / 10`` images of every class out of
its training split and ``n_test / 10`` out of its test split, chosen at random with a fixed
seed, into an ImageFolder-layout folder under a cache directory (ignored by git):
energyat reads that folder (``--dataset imagefolder:PATH``) and the plain loop reads the
same files through :func:`load_arrays` (decoded here with Pillow, cached as ``.npz``), so
both train on the same class-balanced images. energyat's ``--max-train N`` would keep the
first N images of its own fixed shuffle, which is only roughly balanced.

:func:`extract_all` unpacks the whole tarball, for the GPU runs on full CIFAR-10.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: where the shared copy lies relative to the repository root
DEFAULT_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
#: the cache of extracted folders, decoded arrays and runs (``runs/`` is ignored by git)
DEFAULT_CACHE = REPO_ROOT / "runs" / "reproduce"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
DONE = ".complete"  # written last: a folder without it is an interrupted extraction


class DataMissing(Exception):
    """The tarball is not where it was looked for."""


def find_tarball(path: str | os.PathLike | None) -> Path:
    """The tarball at ``path`` (default :data:`DEFAULT_TARBALL`); :class:`DataMissing` if absent."""
    tarball = Path(path) if path else DEFAULT_TARBALL
    if not tarball.is_file():
        raise DataMissing(f"no CIFAR-10 JPEG tarball at {tarball} (pass --data PATH/cifar10-jpeg.tar.gz)")
    return tarball


def _members(tarball: Path) -> dict[tuple[str, str], list[str]]:
    """The JPEG names of the tarball, by (split, class), sorted; only ``split/class/name.jpg`` entries."""
    names: dict[tuple[str, str], list[str]] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in SPLITS and parts[1] in CLASSES:
                names.setdefault((parts[0], parts[1]), []).append(parts[2])
    return {key: sorted(value) for key, value in names.items()}


def _write_members(tarball: Path, keep: set[str], dest: Path) -> None:
    """Copy the regular-file members named in ``keep`` (``split/class/name``) under ``dest``."""
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.name not in keep or not member.isfile():
                continue
            split, cls, name = member.name.split("/")
            if name in ("", ".", "..") or "\\" in name:  # names come from a listing filtered above; be strict anyway
                continue
            target = dest / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())


def _stamp(tarball: Path, *extra: object) -> str:
    """What a cached folder was made from: the tarball's size and mtime, and ``extra``."""
    st = tarball.stat()
    return hashlib.sha256(repr((st.st_size, st.st_mtime_ns, *extra)).encode()).hexdigest()[:16]


def _ready(folder: Path, stamp: str) -> bool:
    done = folder / DONE
    return done.is_file() and done.read_text() == stamp


def balanced_folder(tarball: Path, cache: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """An ImageFolder holding ``n_train / 10`` train and ``n_test / 10`` test images of every class.

    The images of a class are drawn without replacement from its sorted file names with
    ``numpy.random.default_rng(seed)``; the folder is made once and reused while the
    tarball is unchanged.
    """
    if n_train % len(CLASSES) or n_test % len(CLASSES):
        raise ValueError(f"n_train and n_test must be multiples of {len(CLASSES)} (a class-balanced subset)")
    folder = cache / f"cifar10-balanced-{n_train}-{n_test}-seed{seed}"
    stamp = _stamp(tarball, n_train, n_test, seed)
    if _ready(folder, stamp):
        return folder
    names = _members(tarball)
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for split, n in (("train", n_train // len(CLASSES)), ("test", n_test // len(CLASSES))):
        for cls in CLASSES:
            available = names.get((split, cls), [])
            if len(available) < n:
                raise ValueError(f"{tarball} holds {len(available)} {split} images of {cls}; {n} are needed")
            for i in sorted(rng.choice(len(available), size=n, replace=False)):
                keep.add(f"{split}/{cls}/{available[i]}")
    _write_members(tarball, keep, folder)
    (folder / "arrays.npz").unlink(missing_ok=True)
    (folder / DONE).write_text(stamp)
    return folder


def extract_all(tarball: Path, cache: Path) -> Path:
    """The whole tarball unpacked (all 60,000 images) under ``cache``, made once."""
    folder = cache / "cifar10-jpeg"
    stamp = _stamp(tarball, "all")
    if _ready(folder, stamp):
        return folder
    keep = {f"{split}/{cls}/{name}" for (split, cls), files in _members(tarball).items() for name in files}
    _write_members(tarball, keep, folder)
    (folder / DONE).write_text(stamp)
    return folder


def _decode(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 32, 32, 3) and int64 labels of ``folder/split``, classes in CIFAR-10 order."""
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        for path in sorted((folder / split / cls).glob("*.jpg")):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def load_arrays(folder: Path) -> dict[str, np.ndarray]:
    """``train_x``, ``train_y``, ``test_x``, ``test_y`` of a subset folder (HWC uint8), cached in ``arrays.npz``."""
    cached = folder / "arrays.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    train_x, train_y = _decode(folder, "train")
    test_x, test_y = _decode(folder, "test")
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cached)
    return arrays
