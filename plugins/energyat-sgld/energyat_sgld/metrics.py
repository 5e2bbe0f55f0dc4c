"""Sample quality: FID against the training set and Inception Score, through torch-fidelity.

The metrics are computed by torch-fidelity's own functions (``fid_features_to_statistics``,
``fid_statistics_to_metric``, ``isc_features_to_metric``) from features of a *feature
extractor*: any callable mapping uint8 images ``[N, 3, H, W]`` to ``(features [N, D],
logits [N, K])``. The default one is torch-fidelity's InceptionV3 (the TF-compatible network
FID and IS are defined with: 2048-d pool features, 1008 ``logits_unbiased``); tests pass a
small stand-in network instead, so nothing is downloaded.

torch-fidelity is an optional dependency (``pip install 'energyat-sgld[metrics]'``),
imported only when metrics are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from energyat_core.api import EnergyATError

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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def inception_extractor(weights: str | Path | None, device: torch.device) -> FeatureExtractor:
    """torch-fidelity's InceptionV3 as a feature extractor, from a local ``weights`` file or the cache/network.

    Raises :class:`MetricsError` with the fix when the weights are missing and cannot be downloaded.
    """
    inception, _, _ = _fidelity()
    url = getattr(inception, "URL_INCEPTION_V3", INCEPTION_URL)
    if weights is not None and not Path(weights).is_file():
        raise MetricsError(
            f"Inception weights file '{weights}' does not exist",
            f"download {url} and pass its local path to --inception-weights",
        )
    try:
        net = inception.FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(weights) if weights is not None else None,
        )
    except Exception as err:  # URLError, HTTPError, OSError, pickle/state-dict errors: all mean "no usable weights"
        if weights is not None:
            raise MetricsError(
                f"'{weights}' is not a usable InceptionV3 weights file ({_first_line(err)})",
                f"download torch-fidelity's weights from {url} and pass that file to --inception-weights",
            ) from None
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise MetricsError(
            f"the InceptionV3 weights for FID/IS are not on this machine and could not be downloaded "
            f"({_first_line(err)})",
            f"download {url} on a machine with network access and pass it with --inception-weights FILE "
            f"(or copy it into {hub})",
        ) from None
    net = net.to(device).eval()

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
