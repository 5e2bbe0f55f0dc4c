"""Per-class statistics of the training set that SGLD chains start from.

Two fitted initialisations (methods.md, "SGLD generation"):

* ``gaussian`` (Santurkar et al. 2019): ``x0 ~ N(mu_y, Sigma_y + 1e-4 I)``, clamped to [0,1];
* ``pca`` (WEAT, Mirza et al. 2024): keep the leading principal components ``PC_i`` of the
  class that explain ``variance`` (95%) of its variance and draw
  ``x0 = mu_y + sum_i s_i * z_i * scale * PC_i`` with ``z ~ N(0, 1)`` and ``scale = 0.005``,
  clamped to [0,1].

About the scale of ``s_i``: WEAT's code fits ``sklearn.decomposition.PCA`` on the class's
images in [0,1] and uses its ``singular_values_``, the singular values of the *centred data
matrix* ``X_c`` (n images x d pixels), not the eigenvalues of the covariance. They relate by
``s_i = sqrt((n - 1) * lambda_i)``, so the sample's standard deviation along ``PC_i`` is
``0.005 * sqrt(n - 1) * sqrt(lambda_i)``: about ``0.35 * sqrt(lambda_i)`` for CIFAR-10's
5,000 images per class. We follow that definition; it depends on the number of images a
class is fitted on (``fit_n``), exactly as WEAT's initialisation does.

Both fits come from one eigendecomposition per class of the Gram matrix of ``X_c`` (the
smaller of ``X_c X_c^T`` and ``X_c^T X_c``), computed in float64 on the run's device. The
full ``d x d`` covariance is never needed: ``Sigma_y = V diag(s^2 / (n - 1)) V^T``, so a
Gaussian sample is ``mu_y + V (s / sqrt(n - 1) * z) + 0.01 * z'``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from energyat_core.api import CheckpointError, atomic_save, read_safetensors

#: added to the class covariance of the ``gaussian`` initialisation (Santurkar et al. 2019)
GAUSSIAN_RIDGE = 1e-4
#: version of the cache file layout; a different one is refitted
CACHE_VERSION = "1"
FITTED = ("gaussian", "pca")


def cache_path(run_dir: str | Path, kind: str) -> Path:
    """Where the fitted statistics of ``kind`` are cached inside a run directory."""
    return Path(run_dir) / f"sgld_init_{kind}.safetensors"


def data_fingerprint(train_x: torch.Tensor, train_y: torch.Tensor) -> str:
    """A cheap identity of a training set (size and checksums), to tell a stale cache."""
    n = int(train_y.shape[0])
    weights = torch.arange(1, n + 1, dtype=torch.int64)
    return f"{n}:{tuple(train_x.shape[1:])}:{int(train_x.sum(dtype=torch.int64))}:{int((train_y * weights).sum())}"


@dataclass
class ClassStats:
    """Per-class mean, principal directions and singular values (of the centred data matrix)."""

    kind: str
    means: list[torch.Tensor]  # each [d]
    bases: list[torch.Tensor]  # each [r_c, d], orthonormal rows, sorted by decreasing singular value
    singular: list[torch.Tensor]  # each [r_c]
    counts: list[int]  # images the class was fitted on
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.means)

    def to(self, device: torch.device) -> ClassStats:
        return ClassStats(
            self.kind,
            [m.to(device) for m in self.means],
            [b.to(device) for b in self.bases],
            [s.to(device) for s in self.singular],
            list(self.counts),
            self.image_shape,
        )

    def component_scales(self, c: int, pca_scale: float) -> torch.Tensor:
        """The standard deviation of ``x0`` along each kept direction of class ``c``."""
        s = self.singular[c]
        if self.kind == "pca":
            return s * pca_scale
        return s / max(self.counts[c] - 1, 1) ** 0.5  # sqrt of the covariance's eigenvalues

    def sample(self, y: torch.Tensor, pca_scale: float = 0.005) -> torch.Tensor:
        """Starting images for labels ``y``, in [0,1], shape ``[len(y), C, H, W]`` (float32)."""
        device = self.means[0].device
        y = y.to(device)
        d = self.means[0].numel()
        out = torch.empty(len(y), d, device=device, dtype=torch.float32)
        for c in torch.unique(y).tolist():
            idx = (y == c).nonzero().squeeze(1)
            scales = self.component_scales(c, pca_scale)
            z = torch.randn(len(idx), scales.numel(), device=device)
            x = self.means[c] + (z * scales) @ self.bases[c]
            if self.kind == "gaussian":
                x = x + GAUSSIAN_RIDGE**0.5 * torch.randn(len(idx), d, device=device)
            out[idx] = x.float()
        return out.clamp_(0.0, 1.0).view(len(y), *self.image_shape)


def _principal(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and right singular vectors ``[r, d]`` of a centred matrix."""
    n, d = xc.shape
    if n <= d:
        evals, u = torch.linalg.eigh(xc @ xc.T)  # n x n
        s = evals.clamp_min(0).sqrt().flip(0)
        u = u.flip(1)
        keep = s > s[0] * max(n, d) * torch.finfo(xc.dtype).eps
        s, u = s[keep], u[:, keep]
        v = (xc.T @ u) / s  # d x r, columns orthonormal
        return s, v.T.contiguous()
    evals, v = torch.linalg.eigh(xc.T @ xc)  # d x d
    s = evals.clamp_min(0).sqrt().flip(0)
    v = v.flip(1)
    keep = s > s[0] * max(n, d) * torch.finfo(xc.dtype).eps
    return s[keep], v[:, keep].T.contiguous()


def fit_class_stats(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    kind: str,
    *,
    fit_n: int = 5000,
    variance: float = 0.95,
    device: torch.device | None = None,
) -> ClassStats:
    """Fit the ``gaussian`` or ``pca`` initialisation on uint8 images ``[N, C, H, W]``.

    Each class uses its first ``fit_n`` training images (deterministic). ``pca`` keeps the
    fewest leading components whose share of the class variance reaches ``variance``;
    ``gaussian`` keeps every direction of non-zero variance. A class without training
    images starts from the mean image of the whole training set (no components).
    """
    if kind not in FITTED:
        raise ValueError(f"kind must be one of {', '.join(FITTED)}, got {kind!r}")
    device = device or torch.device("cpu")
    image_shape = tuple(int(s) for s in train_x.shape[1:])
    d = int(torch.tensor(image_shape).prod())
    overall = train_x.reshape(len(train_x), d).double().mean(0).div(255).float().to(device)
    means, bases, singular, counts = [], [], [], []
    for c in range(num_classes):
        xs = train_x[train_y == c][:fit_n]
        n = int(xs.shape[0])
        counts.append(n)
        if n == 0:
            means.append(overall)
            bases.append(torch.zeros(0, d, device=device))
            singular.append(torch.zeros(0, device=device))
            continue
        x = xs.reshape(n, d).to(device=device, dtype=torch.float64) / 255.0
        mean = x.mean(0)
        means.append(mean.float())
        if n < 2:
            bases.append(torch.zeros(0, d, device=device))
            singular.append(torch.zeros(0, device=device))
            continue
        s, v = _principal(x - mean)
        if kind == "pca" and s.numel():
            share = torch.cumsum(s**2, 0) / (s**2).sum()
            r = int((share < variance - 1e-12).sum()) + 1  # fewest components reaching the share
            s, v = s[:r], v[:r]
        bases.append(v.float())
        singular.append(s.float())
    return ClassStats(kind, means, bases, singular, counts, image_shape)  # type: ignore[arg-type]


def _meta(kind: str, fit_n: int, variance: float, fingerprint: str, num_classes: int) -> dict[str, str]:
    key = {"kind": kind, "fit_n": fit_n, "num_classes": num_classes, "data": fingerprint, "version": CACHE_VERSION}
    if kind == "pca":
        key["variance"] = variance
    return {"energyat_sgld_init": json.dumps(key, sort_keys=True)}


def save_stats(path: Path, stats: ClassStats, meta: dict[str, str]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for c in range(stats.num_classes):
        tensors[f"mean.{c}"] = stats.means[c].cpu()
        tensors[f"basis.{c}"] = stats.bases[c].cpu()
        tensors[f"singular.{c}"] = stats.singular[c].cpu()
    extra = {"counts": json.dumps(stats.counts), "image_shape": json.dumps(list(stats.image_shape))}
    atomic_save(tensors, path, {**meta, **extra})


def load_stats(path: Path, meta: dict[str, str], kind: str) -> ClassStats | None:
    """The cached statistics if ``path`` holds the ones ``meta`` describes, else ``None``."""
    if not path.is_file():
        return None
    try:
        tensors, stored = read_safetensors(path)
    except CheckpointError:
        return None  # unreadable cache: refit and overwrite
    if stored.get("energyat_sgld_init") != meta["energyat_sgld_init"]:
        return None
    counts = json.loads(stored["counts"])
    n_classes = len(counts)
    return ClassStats(
        kind,
        [tensors[f"mean.{c}"] for c in range(n_classes)],
        [tensors[f"basis.{c}"] for c in range(n_classes)],
        [tensors[f"singular.{c}"] for c in range(n_classes)],
        counts,
        tuple(json.loads(stored["image_shape"])),  # type: ignore[arg-type]
    )


def load_or_fit(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    kind: str,
    *,
    fit_n: int,
    variance: float,
    device: torch.device,
    run_dir: str | Path | None,
) -> tuple[ClassStats, dict[str, Any]]:
    """Cached statistics from ``run_dir`` when they match the data and options, else a fresh fit.

    Returns the statistics (on ``device``) and a small report: ``{"cached": bool, "path": str|None}``.
    """
    meta = _meta(kind, fit_n, variance, data_fingerprint(train_x, train_y), num_classes)
    path = cache_path(run_dir, kind) if run_dir is not None else None
    if path is not None:
        stats = load_stats(path, meta, kind)
        if stats is not None:
            return stats.to(device), {"cached": True, "path": str(path)}
    stats = fit_class_stats(train_x, train_y, num_classes, kind, fit_n=fit_n, variance=variance, device=device)
    if path is not None:
        save_stats(path, stats, meta)
    return stats, {"cached": False, "path": str(path) if path is not None else None}
