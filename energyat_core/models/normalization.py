"""The input normalisation a :class:`~energyat_core.models.Classifier` puts in front of its backbone.

``--normalize`` (the run setting ``normalize``, and ``energyat eval --weights``) takes one of:

- ``dataset``: the dataset's per-channel mean and std (the default; a backbone that declares
  :attr:`~energyat_core.components.Backbone.input_normalization`, e.g. one that normalises its
  input itself, gets its own instead);
- ``none``: mean 0, std 1 (the backbone takes [0, 1] images, e.g. a model that normalises itself);
- ``MEAN,STD``: numbers, either two (one mean and one std for every channel) or ``2*C`` (the
  ``C`` channel means, then the ``C`` stds), e.g. ``0.5,0.25`` or
  ``0.4914,0.4822,0.4465,0.2470,0.2435,0.2616``.

A weights file records the normalisation it was trained with (see docs/models.md):
:func:`recorded_normalization` reads it back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.options import parse_number

#: the keywords ``--normalize`` takes besides numbers
KEYWORDS = ("dataset", "none")
#: how the values are written, for messages
FORM = "dataset, none, or MEAN,STD (two numbers, or the C channel means then the C stds)"
#: the help of the setting (``energyat train --normalize``) and of ``energyat eval --normalize``
HELP = (
    "input normalisation put in front of the backbone (the model always takes [0, 1] images): dataset (its "
    "per-channel mean/std; none for a backbone that declares it normalises its input itself), none (the "
    "backbone normalises itself), or MEAN,STD: two numbers for every channel, or "
    "the C channel means then the C stds, e.g. 0.5,0.25; stored in the model file's mean/std buffers"
)
#: the metadata key of a weights file that records its normalisation without buffers (a backbone-only file)
METADATA_KEY = "normalization"

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def check_normalize(text: str) -> str:
    """``text`` in its canonical form (keywords lower-case, numbers comma-separated); ValueError if malformed."""
    spec = text.strip().lower()
    if spec in KEYWORDS:
        return spec
    values = _numbers(text)
    return ",".join(repr(v) for v in values)


def _numbers(text: str) -> list[float]:
    """The numbers of a ``MEAN,STD`` spec, checked: an even count of finite values, every std > 0."""
    try:
        values = [parse_number(part) for part in text.replace(" ", "").split(",") if part]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"normalize takes {FORM}, got {text!r}") from None
    if not values or len(values) % 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"normalize takes {FORM}, got {text!r} ({len(values)} values)")
    stds = values[len(values) // 2 :]
    if min(stds) <= 0:
        raise ValueError(f"normalize needs every std > 0, got {text!r}")
    return values


def resolve_normalize(spec: str, data_mean: Sequence[float], data_std: Sequence[float]) -> Stats:
    """The (mean, std) per channel that ``spec`` gives for data whose statistics are ``data_mean``/``data_std``.

    Raises a one-line :class:`ConfigError` when ``spec`` gives another number of channels than the data has.
    """
    channels = len(data_mean)
    spec = check_normalize(spec)
    if spec == "dataset":
        return tuple(float(v) for v in data_mean), tuple(float(v) for v in data_std)
    if spec == "none":
        return (0.0,) * channels, (1.0,) * channels
    values = _numbers(spec)
    half = len(values) // 2
    if half == 1:
        return (values[0],) * channels, (values[1],) * channels
    if half != channels:
        raise ConfigError(
            f"normalize '{spec}' gives {len(values)} values ({half} channels), the images have {channels} channels",
            f"give MEAN,STD (2 values) or the {channels} channel means then the {channels} stds "
            f"({2 * channels} values)",
        )
    return tuple(values[:half]), tuple(values[half:])


def format_normalize(mean: Sequence[float], std: Sequence[float]) -> str:
    """The ``MEAN,STD`` spec of per-channel statistics (exact for float32 values)."""
    return ",".join(repr(float(v)) for v in (*mean, *std))


def describe(mean: Sequence[float], std: Sequence[float]) -> str:
    """Statistics as a person reads them: ``mean (0.491, 0.482, 0.447), std (0.247, 0.243, 0.262)``."""
    return f"mean ({', '.join(f'{v:.4g}' for v in mean)}), std ({', '.join(f'{v:.4g}' for v in std)})"


def recorded_normalization(tensors: dict[str, Any], metadata: dict[str, str], source: str) -> Stats | None:
    """The normalisation a weights file records, or ``None`` if it records none.

    Two records are read, in this order: the ``mean`` and ``std`` buffers of energyat's layout
    (every other key starts with ``net.``), then the metadata entry ``normalization``
    (``{"mean": [...], "std": [...]}``) of a file that holds the backbone alone. A record that
    is present but unusable (other lengths, a std <= 0) is a one-line :class:`CheckpointError`.
    """
    if (
        "mean" in tensors
        and "std" in tensors
        and all(k.startswith("net.") for k in tensors if k not in ("mean", "std"))
    ):
        mean = [float(v) for v in tensors["mean"].detach().float().flatten().tolist()]
        std = [float(v) for v in tensors["std"].detach().float().flatten().tolist()]
        return _checked(mean, std, source, "its mean/std buffers")
    if METADATA_KEY not in metadata:
        return None
    bad = CheckpointError(
        f"the metadata '{METADATA_KEY}' of '{source}' is not {{\"mean\": [...], \"std\": [...]}}",
        "the file is damaged or was not written by energyat; give the normalisation with --normalize",
    )
    try:
        record = json.loads(metadata[METADATA_KEY])
        mean = [float(v) for v in record["mean"]]
        std = [float(v) for v in record["std"]]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise bad from None
    return _checked(mean, std, source, f"its metadata '{METADATA_KEY}'")


def _checked(mean: list[float], std: list[float], source: str, where: str) -> Stats:
    """``(mean, std)`` if they are a usable normalisation, else a one-line CheckpointError naming ``where``."""
    finite = all(math.isfinite(v) for v in (*mean, *std))
    if not mean or len(mean) != len(std) or not finite or min(std) <= 0:
        raise CheckpointError(
            f"'{source}' records an unusable normalisation in {where} (mean {mean[:4]}, std {std[:4]})",
            "the file is damaged; give the normalisation with --normalize",
        )
    return tuple(mean), tuple(std)
