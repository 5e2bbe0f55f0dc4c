"""Where datasets live on disk, and a small cache of decoded arrays.

Decoding tens of thousands of image files takes a while, so a dataset can store the
decoded arrays once in an ``.npz`` file named by a hash of everything they depend on
(:func:`cache_key`) and read them back on the next run in a fraction of a second
(:func:`cached_arrays`: read, or make and write). Files are written atomically (a
temporary file, then ``os.replace``), so an interrupted run or two runs at once never
leave a half-written cache behind. A cache that cannot be written or read is only a
warning: the data is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR_ENV = "ENERGYAT_DATA_DIR"
CACHE_DIR_ENV = "ENERGYAT_CACHE_DIR"


def default_data_dir() -> Path:
    """Where downloaded datasets go: ``$ENERGYAT_DATA_DIR`` or ``~/.cache/energyat/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(os.path.expanduser(env)) if env else Path(os.path.expanduser("~/.cache/energyat/data"))


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$ENERGYAT_CACHE_DIR`` or ``~/.cache/energyat/cache``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(os.path.expanduser(env)) if env else Path(os.path.expanduser("~/.cache/energyat/cache"))


def cache_key(*parts: Any) -> str:
    """A short hex digest of JSON-serialisable ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def cache_path(prefix: str, key: str) -> Path:
    """The cache file for ``prefix`` (e.g. the dataset's name) and ``key``."""
    return cache_dir() / f"{prefix}-{key}.npz"


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path``, or None if there is no usable cache file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable cache file {path} ({err})", stacklevel=2)
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` atomically; return False (with a warning) if that fails."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp_name, path)
        return True
    except OSError as err:
        warnings.warn(
            f"could not write cache file {path} ({err}); set {CACHE_DIR_ENV} to a writable folder", stacklevel=2
        )
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        return False


def cached_arrays(prefix: str, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached for ``prefix`` and ``key``; without a usable cache file, ``make()``'s (then saved)."""
    path = cache_path(prefix, key)
    arrays = load_arrays(path)
    if arrays is None:
        arrays = make()
        save_arrays(path, arrays)
    return arrays
