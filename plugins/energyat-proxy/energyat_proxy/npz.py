"""The proxy file: an ``.npz`` of uint8 NHWC images and integer labels, checked before training.

The file is what ``np.savez(path, images=x, labels=y)`` or ``energyat generate`` writes:
``images`` uint8 [N, H, W, C] and ``labels`` integer [N] (``x`` and ``y`` are accepted as
alternative names). Everything about the images is checked from the ``.npy`` header of
their member alone, so a file of millions of images is rejected in milliseconds when it
does not fit the run.

Images larger than the memory budget are memory-mapped instead of read whole. A member
of an ``.npz`` can be mapped only if it is stored uncompressed (``np.savez``); the images
of a compressed file (``np.savez_compressed``) are decompressed once, in chunks, into an
uncompressed ``.npy`` in energyat's cache folder, which is mapped from then on.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energyat_core.api import CACHE_DIR_ENV, DataError, cache_dir, cache_key

IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")
SAVE_HINT = "save it with np.savez(path, images=uint8 array [N, H, W, C], labels=int array [N])"
#: bytes decompressed per read when a compressed file is copied to the cache
CHUNK = 1 << 24
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header, 30 bytes


@dataclass(frozen=True)
class Member:
    """An array inside the ``.npz``, as its ``.npy`` header describes it (no data read)."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    compressed: bool
    data_offset: int | None  # where the array's bytes start in the file; None when compressed


@dataclass
class ProxySet:
    """The validated proxy images (in memory or memory-mapped) and their stored labels."""

    images: np.ndarray  # uint8 [N, H, W, C]; an np.memmap when ``mapped``
    labels: np.ndarray | None  # int64 [N], None when the file has none (pseudo-labelling)
    path: Path
    mapped: bool

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _read_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    else:  # 2.0 and 3.0 share the 4-byte header length; uint8/int headers are plain ASCII
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    return tuple(int(s) for s in shape), bool(fortran_order), np.dtype(dtype)


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Offset of a member's first byte in the file (after its local header)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for member {info.filename}")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def read_members(path: Path) -> dict[str, Member]:
    """Every array of the ``.npz`` at ``path`` by name, from headers only; one-line errors otherwise."""
    if not path.exists():
        raise DataError(f"proxy file '{path}' does not exist", "check the path given to --source proxy:PATH")
    if not path.is_file():
        raise DataError(f"proxy file '{path}' is not a file", f"pass the .npz itself; {SAVE_HINT}")
    try:
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
    except OSError as err:
        raise DataError(
            f"proxy file '{path}' cannot be read ({err.strerror or err})", "check its permissions"
        ) from None
    if is_npy:
        raise DataError(
            f"proxy file '{path}' is a single .npy array, not an .npz of images and labels", f"{SAVE_HINT} instead"
        )
    members: dict[str, Member] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                with zf.open(info) as stream:
                    shape, fortran_order, dtype = _read_header(stream)
                    header_len = stream.tell()
                compressed = info.compress_type != zipfile.ZIP_STORED
                offset = None if compressed else _data_start(path, info) + header_len
                members[key] = Member(key, shape, dtype, fortran_order, compressed, offset)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"proxy file '{path}' is not a readable .npz ({reason})", SAVE_HINT) from None
    return members


def _pick(members: dict[str, Member], keys: tuple[str, ...]) -> Member | None:
    return next((members[k] for k in keys if k in members), None)


def _held(members: dict[str, Member]) -> str:
    return ", ".join(f"'{k}' {m.dtype} {list(m.shape)}" for k, m in members.items()) or "no arrays"


def check_images(path: Path, m: Member, image_shape: tuple[int, int, int]) -> None:
    """Raise :class:`DataError` unless ``m`` is uint8 [N, H, W, C] matching the real images' (C, H, W)."""
    c, h, w = image_shape
    if m.dtype != np.uint8:
        fix = (
            "store uint8 images: (x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]"
            if m.dtype.kind == "f"
            else "store uint8 images (0-255), e.g. x.clip(0, 255).astype(np.uint8)"
        )
        raise DataError(f"proxy images '{m.key}' in '{path}' are {m.dtype}, not uint8", fix)
    if len(m.shape) != 4:
        raise DataError(
            f"proxy images '{m.key}' in '{path}' have shape {list(m.shape)}; "
            f"expected [N, H, W, C] = [N, {h}, {w}, {c}]",
            "store one image per row, channels last",
        )
    n, mh, mw, mc = m.shape
    if mc != c and m.shape[1] == c and (mw, mc) == (h, w):
        raise DataError(
            f"proxy images '{m.key}' in '{path}' are channels-first {list(m.shape)}; expected [N, {h}, {w}, {c}]",
            "store them channels-last: x.transpose(0, 2, 3, 1)",
        )
    if mc != c:
        raise DataError(
            f"proxy images '{m.key}' in '{path}' have {mc} channels but the real images have {c}",
            f"convert the proxy images to {c} channels (or train on a dataset with {mc})",
        )
    if (mh, mw) != (h, w):
        raise DataError(
            f"proxy images '{m.key}' in '{path}' are {mh}x{mw} but the real images are {h}x{w}",
            f"resize the proxy images to {h}x{w} before saving them",
        )
    if n == 0:
        raise DataError(f"proxy file '{path}' holds no images", "generate or collect some images first")
    if m.fortran_order:
        raise DataError(
            f"proxy images '{m.key}' in '{path}' are stored in Fortran order",
            "save np.ascontiguousarray(images) instead",
        )


def check_labels(path: Path, labels: np.ndarray, key: str, n_images: int, num_classes: int) -> np.ndarray:
    """Validate stored labels and return them as int64 [N]."""
    if labels.ndim != 1:
        fix = "use labels.argmax(1) for one-hot labels" if labels.ndim == 2 else "store one class index per image"
        raise DataError(f"proxy labels '{key}' in '{path}' have shape {list(labels.shape)}; expected [N]", fix)
    if labels.dtype.kind not in "iu":
        raise DataError(
            f"proxy labels '{key}' in '{path}' are {labels.dtype}; integer class indices are needed",
            "store labels.astype(np.int64)",
        )
    if len(labels) != n_images:
        raise DataError(
            f"proxy file '{path}' holds {n_images} images but {len(labels)} labels", "store exactly one label per image"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"proxy label {lo if lo < 0 else hi} in '{path}' is outside [0, {num_classes})",
            f"the real dataset has {num_classes} classes: labels must be its class indices 0..{num_classes - 1}",
        )
    return labels.astype(np.int64)


def check_class_count(path: Path, npz: np.lib.npyio.NpzFile, num_classes: int) -> None:
    """If the file says how many classes it was made for (``num_classes`` or ``classes``), it must match."""
    for key in ("num_classes", "classes"):
        if key not in npz.files:
            continue
        try:
            value = npz[key]
        except ValueError as err:  # object arrays need pickle, which is never allowed
            raise DataError(
                f"proxy array '{key}' in '{path}' cannot be read ({err})",
                f"store '{key}' as a plain array (strings or integers), or leave it out",
            ) from None
        count = int(value) if key == "num_classes" and value.size == 1 else len(value.reshape(-1))
        if count != num_classes:
            raise DataError(
                f"proxy file '{path}' was made for {count} classes ('{key}') but the real dataset has {num_classes}",
                "use a proxy set generated for the dataset you train on (same classes, same order)",
            )


def map_stored(path: Path, m: Member) -> np.memmap:
    """Memory-map an uncompressed member in place."""
    assert m.data_offset is not None
    return np.memmap(path, dtype=m.dtype, mode="r", offset=m.data_offset, shape=m.shape)


def uncompressed_copy(path: Path, m: Member, budget_mb: int) -> np.memmap:
    """Decompress a member once into a cached ``.npy`` (chunk by chunk) and memory-map that."""
    st = path.stat()
    folder = cache_dir()
    target = folder / f"proxy-{cache_key(str(path.resolve()), st.st_size, st.st_mtime_ns, m.key)}.npy"
    if target.is_file():
        try:
            cached = np.load(target, mmap_mode="r", allow_pickle=False)
            if cached.shape == m.shape and cached.dtype == m.dtype:
                return cached
        except (OSError, ValueError):
            pass  # unreadable leftover: write it again
    tmp_name = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.stem}-", suffix=".tmp")
        os.close(fd)
        out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=m.dtype, shape=m.shape)
        flat = out.reshape(-1).view(np.uint8)
        with zipfile.ZipFile(path) as zf, zf.open(f"{m.key}.npy") as stream:
            _read_header(stream)
            pos = 0
            while pos < flat.size:
                got = stream.readinto(memoryview(flat[pos : pos + CHUNK]))
                if not got:
                    raise EOFError(f"member '{m.key}' ends after {pos} of {flat.size} bytes")
                pos += got
        out.flush()
        del out, flat
        os.replace(tmp_name, target)
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise DataError(
            f"proxy file '{path}' is compressed and larger than the memory budget ({budget_mb} MB), and no "
            f"uncompressed copy could be written to '{folder}' ({err})",
            "re-save it uncompressed with np.savez (not savez_compressed) so that it can be memory-mapped, raise "
            f"--set source.memory_budget_mb, or set {CACHE_DIR_ENV} to a writable folder",
        ) from None
    return np.load(target, mmap_mode="r", allow_pickle=False)


def load_proxy(
    path: str | Path,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    need_labels: bool,
    memory_budget_mb: int,
) -> ProxySet:
    """Open and validate a proxy file for real images of ``image_shape`` (C, H, W) and ``num_classes`` classes.

    The images are read whole when they fit in ``memory_budget_mb``, memory-mapped otherwise.
    Raises :class:`DataError` with the problem and its fix for anything that does not fit.
    """
    path = Path(path).expanduser()
    members = read_members(path)
    images = _pick(members, IMAGE_KEYS)
    if images is None:
        raise DataError(
            f"proxy file '{path}' has no images array (it holds {_held(members)})",
            "store the images as 'images' (or 'x'): np.savez(path, images=x, labels=y)",
        )
    check_images(path, images, image_shape)
    label_member = _pick(members, LABEL_KEYS)
    labels = None
    with np.load(path, allow_pickle=False) as npz:
        check_class_count(path, npz, num_classes)
        if need_labels:
            if label_member is None:
                raise DataError(
                    f"proxy file '{path}' has no labels array (it holds {_held(members)})",
                    "store them as 'labels' (or 'y'), or pseudo-label the images: "
                    "--set source.labels=pseudo --set source.pseudo_labeler=RUN_DIR",
                )
            try:
                raw = npz[label_member.key]
            except ValueError as err:  # object arrays need pickle, which is never allowed
                raise DataError(
                    f"proxy labels '{label_member.key}' in '{path}' cannot be read ({err})",
                    "store them as a plain integer array",
                ) from None
            labels = check_labels(path, raw, label_member.key, images.shape[0], num_classes)
        nbytes = int(np.prod(images.shape)) * images.dtype.itemsize
        mapped = nbytes > memory_budget_mb * 2**20
        if not mapped:
            array = npz[images.key]
    if mapped:
        array = uncompressed_copy(path, images, memory_budget_mb) if images.compressed else map_stored(path, images)
    return ProxySet(array, labels, path, mapped)
