"""Sample quality: FID against the training set and Inception Score, through torch-fidelity.

The metrics are computed by torch-fidelity's own functions (``fid_features_to_statistics``,
``fid_statistics_to_metric``, ``isc_features_to_metric``) from features of a *feature
extractor*: any callable mapping uint8 images ``[N, 3, H, W]`` to ``(features [N, D],
logits [N, K])``. The default one is torch-fidelity's InceptionV3 (the TF-compatible network
FID and IS are defined with: 2048-d pool features, 1008 ``logits_unbiased``); tests pass a
small stand-in network instead, so nothing is downloaded.

Nothing is unpickled: the Inception weights (``--inception-weights FILE`` or torch's hub
cache) are read here, weights only (safetensors, or ``torch.load(..., weights_only=True)``),
and handed to torch-fidelity's module, whose own loader (``weights_only=False``) never runs.

torch-fidelity is an optional dependency (``pip install 'energyat-sgld[metrics]'``),
imported only when metrics are asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from energyat_core.api import CheckpointError, EnergyATError, read_weights_only, weights_load_failure

#: where torch-fidelity downloads its InceptionV3 weights from (torch-fidelity 0.4.0)
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
METRICS = ("fid", "is")
INSTALL_HINT = "install the optional extra: pip install 'energyat-sgld[metrics]'"

FeatureExtractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class MetricsError(EnergyATError):
    """FID / IS cannot be computed here (library or Inception weights missing)."""


def parse_metrics(spec: str | None) -> list[str]:
    """``"fid,is"`` -> ``["fid", "is"]``; unknown names are a one-line error."""
    if not spec:
        return []
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricsError(f"unknown metric(s) {', '.join(unknown)}", f"--metrics takes {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def _fidelity():
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as inception
        import torch_fidelity.metric_fid as metric_fid
        import torch_fidelity.metric_isc as metric_isc
    except ImportError:
        raise MetricsError("FID/IS need the torch-fidelity package, which is not installed", INSTALL_HINT) from None
    return inception, metric_fid, metric_isc


def inception_cache_file(url: str = INCEPTION_URL) -> Path:
    """Where torch's hub cache keeps the weights at ``url`` (``$TORCH_HOME/hub/checkpoints/<file name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def read_inception_weights(path: str | Path, fix: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``, never unpickling anything but tensors.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., weights_only=True)`` (torch-fidelity's ``.pth`` file is a plain dict of
    float32 tensors). Whatever else the file holds is a :class:`MetricsError` with ``fix``.
    """
    path = Path(path)
    try:
        raw = read_weights_only(path, "InceptionV3 weights")
    except CheckpointError as err:
        raise MetricsError(err.problem, fix) from None
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        raise MetricsError(f"'{path}' does not hold a state dict of InceptionV3 weights", fix)
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise MetricsError(f"'{path}' holds '{key}', which is not a tensor, among the InceptionV3 weights", fix)
        if not value.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise MetricsError(f"InceptionV3 weight '{key}' in '{path}' is {value.dtype}, not floating point", fix)
    return raw


@contextmanager
def _weights_handed_over(inception: Any, state: dict[str, torch.Tensor]) -> Iterator[list[str]]:
    """While torch-fidelity builds its InceptionV3, give it ``state`` and let nothing be unpickled.

    torch-fidelity 0.4.0's constructor loads the weights itself, with
    ``torch.load(path, weights_only=False)`` or ``load_state_dict_from_url`` (the hub cache,
    unpickled the same way). Built with no path, it calls ``load_state_dict_from_url``, which
    here hands over the already checked ``state``; ``torch.load`` refuses to run meanwhile, so
    another version that loads some other way fails instead of unpickling.
    """
    calls: list[str] = []

    def hand_over(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append(url)
        return state

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MetricsError(
            "this torch-fidelity version loads InceptionV3 weights itself, which energyat does not allow",
            f"install the tested version: {INSTALL_HINT}",
        )

    saved_url, saved_load = inception.load_state_dict_from_url, torch.load
    inception.load_state_dict_from_url, torch.load = hand_over, refuse
    try:
        yield calls
    finally:
        inception.load_state_dict_from_url, torch.load = saved_url, saved_load


def build_inception(inception: Any, state: dict[str, torch.Tensor], source: str | Path, fix: str) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 (2048-d pool features, ``logits_unbiased``) with the weights ``state``."""
    try:
        with _weights_handed_over(inception, state) as calls:
            net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    except MetricsError:
        raise
    except Exception as err:  # load_state_dict: missing or unexpected keys, shapes that do not fit
        raise MetricsError(
            f"'{source}' is not a usable InceptionV3 weights file ({weights_load_failure(err)})", fix
        ) from None
    if len(calls) != 1:
        raise MetricsError(
            "this torch-fidelity version did not take the InceptionV3 weights energyat read",
            f"install the tested version: {INSTALL_HINT}",
        )
    return net


def _download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` (atomically), checking the hash prefix its file name carries."""
    match = torch.hub.HASH_REGEX.search(target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {target}", file=sys.stderr)
    torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None, progress=True)


def load_inception(weights: str | Path | None) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 (on the CPU) with weights from a local ``weights`` file or the cache/network.

    The weights are read here, weights only (:func:`read_inception_weights`), from ``weights``
    or from torch's hub cache (downloaded there first when missing), and handed to
    torch-fidelity's module, which never loads a file itself. Raises :class:`MetricsError`
    with the fix when the weights are missing, cannot be downloaded or are not plain weights.
    """
    inception, _, _ = _fidelity()
    url = getattr(inception, "URL_INCEPTION_V3", INCEPTION_URL)
    if weights is not None:
        source = Path(weights).expanduser()
        fix = f"download torch-fidelity's weights from {url} and pass that file to --inception-weights"
        if not source.exists():
            raise MetricsError(
                f"Inception weights file '{weights}' does not exist",
                f"download {url} and pass its local path to --inception-weights",
            )
        if not source.is_file():
            raise MetricsError(f"Inception weights '{weights}' is not a file", fix)
    else:
        source = inception_cache_file(url)
        fix = f"delete {source} (it is downloaded again) or pass a good copy with --inception-weights FILE"
        if not source.is_file():
            try:
                _download(url, source)
            except Exception as err:  # URLError, HTTPError, OSError, hash mismatch: all mean "no weights"
                raise MetricsError(
                    f"the InceptionV3 weights for FID/IS are not on this machine and could not be downloaded "
                    f"({weights_load_failure(err)})",
                    f"download {url} on a machine with network access and pass it with --inception-weights FILE "
                    f"(or copy it into {source.parent})",
                ) from None
    return build_inception(inception, read_inception_weights(source, fix), source, fix)


def inception_extractor(weights: str | Path | None, device: torch.device) -> FeatureExtractor:
    """:func:`load_inception`'s network on ``device`` as a feature extractor (pool features, logits)."""
    net = load_inception(weights).to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = net(images.to(device))
        return features, logits

    return extract


def _batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def _as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"FID/IS need 1- or 3-channel images, got {images.shape[1]} channels")
    return images


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits of uint8 images, batch by batch, as float64 CPU tensors."""
    images = _as_rgb_uint8(images)
    feats, logits = [], []
    for batch in _batches(images, batch_size):
        f, lg = extractor(batch)
        feats.append(f.detach().double().cpu())
        logits.append(lg.detach().double().cpu())
    return torch.cat(feats), torch.cat(logits)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets (torch-fidelity's statistics and formula)."""
    _, metric_fid, _ = _fidelity()
    stats_a = metric_fid.fid_features_to_statistics(features_a.double().cpu())
    stats_b = metric_fid.fid_features_to_statistics(features_b.double().cpu())
    return float(metric_fid.fid_statistics_to_metric(stats_a, stats_b, False)[metric_fid.KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of class logits (torch-fidelity's formula)."""
    _, _, metric_isc = _fidelity()
    splits = max(1, min(splits, len(logits)))
    out = metric_isc.isc_features_to_metric(logits.double().cpu(), splits=splits, shuffle=True, rng_seed=2020)
    return float(out[metric_isc.KEY_METRIC_ISC_MEAN]), float(out[metric_isc.KEY_METRIC_ISC_STD])


def compute_metrics(
    generated: torch.Tensor,
    real: torch.Tensor | None,
    names: list[str],
    extractor: FeatureExtractor,
    *,
    batch_size: int = 100,
    splits: int = 10,
) -> dict[str, float]:
    """FID of ``generated`` against ``real`` and/or Inception Score of ``generated`` (uint8 NCHW).

    Returns ``{"fid": ..., "is_mean": ..., "is_std": ...}`` for the requested ``names``.
    """
    _fidelity()  # fail early, with the install hint, if the library is missing
    out: dict[str, float] = {}
    if not names:
        return out
    gen_feats, gen_logits = extract_features(extractor, generated, batch_size)
    if "fid" in names:
        if real is None:
            raise ValueError("FID needs real images")
        real_feats, _ = extract_features(extractor, real, batch_size)
        out["fid"] = frechet_distance(gen_feats, real_feats)
    if "is" in names:
        out["is_mean"], out["is_std"] = inception_score(gen_logits, splits)
    return out
