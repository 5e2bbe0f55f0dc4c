"""Plots of a run: accuracy and energy dynamics per epoch, and per-sample energy histograms.

matplotlib is an optional dependency (``pip install energyat-core[plot]``), imported only
here and only when a plot is drawn. Figures are built with the object-oriented API on the
Agg canvas (no pyplot, no global backend state), so plotting works headless and from any
thread. PNGs carry no timestamp: the same data gives the same bytes.

The energy plots follow the diagnostic of the energy papers (WEAT, Mirza et al. 2024): the
mean marginal energy ``E(x) = -logsumexp f(x)`` of natural and of PGD-adversarial inputs
per epoch. A widening gap between the two goes with robust overfitting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyat_core.energy import marginal_energy
from energyat_core.errors import EnergyATError
from energyat_core.evaluation import batched
from energyat_core.modes import model_mode
from energyat_core.perturbation import Norm, default_step, pgd

#: PNG metadata: no software version or timestamp, so that bytes depend on the data only
PNG_METADATA = {"Software": None}
CLEAN_COLOR = "#1f77b4"
ADV_COLOR = "#d62728"


def require_matplotlib() -> Any:
    """The ``matplotlib.figure.Figure`` class with an Agg canvas, or a one-line error."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EnergyATError(
            "plotting needs matplotlib, which is not installed", "pip install energyat-core[plot]"
        ) from None

    def new_figure(**kwargs: Any) -> Any:
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig

    return new_figure


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a truncated last line (a run killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and _number(record.get("epoch")):
                records.append(record)
    return records


def _number(value: Any) -> bool:
    """A finite int or float (JSON booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def last_per_epoch(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per epoch (the last written), sorted by epoch; records without an epoch are dropped."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in metrics:
        if "epoch" in record:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["epoch"]), float(r[key])) for r in records if _number(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, metadata=PNG_METADATA)
    return path


def plot_accuracy(metrics: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Clean and PGD accuracy per epoch (percent), the best robust epoch marked."""
    new_figure = require_matplotlib()
    records = last_per_epoch(metrics)
    fig = new_figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for key, label, color in (("clean_acc", "clean", CLEAN_COLOR), ("robust_acc", "PGD (robust)", ADV_COLOR)):
        epochs, values = _series(records, key)
        if epochs:
            ax.plot(epochs, [100 * v for v in values], marker="o", markersize=3, color=color, label=label)
    epochs, robust = _series(records, "robust_acc")
    if robust:
        best = max(range(len(robust)), key=lambda i: robust[i])
        ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1)
        right_half = epochs[best] > (epochs[0] + epochs[-1]) / 2
        ax.annotate(
            f"best robust: epoch {epochs[best]}",
            (epochs[best], 100 * robust[best]),
            textcoords="offset points",
            xytext=(-4 if right_half else 4, -12),
            ha="right" if right_half else "left",
            fontsize=8,
            color="grey",
        )
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, Path(path))


def plot_energy(metrics: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Mean E(x) and E(x_adv) per epoch (top) and their gap E(x_adv) - E(x) (bottom)."""
    new_figure = require_matplotlib()
    records = last_per_epoch(metrics)
    fig = new_figure(figsize=(5.5, 4.6), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    e_clean = _series(records, "energy_clean")
    e_adv = _series(records, "energy_adv")
    if e_clean[0]:
        top.plot(*e_clean, marker="o", markersize=3, color=CLEAN_COLOR, label="E(x), natural")
    if e_adv[0]:
        top.plot(*e_adv, marker="o", markersize=3, color=ADV_COLOR, label="E(x_adv), PGD")
    top.set_ylabel("mean energy")
    top.set_title(title or "energy per epoch (E(x) = -logsumexp f(x))", fontsize=10)
    top.grid(alpha=0.3)
    _legend(top)
    both = [r for r in records if r.get("energy_clean") is not None and r.get("energy_adv") is not None]
    bottom.plot(
        [int(r["epoch"]) for r in both],
        [float(r["energy_adv"]) - float(r["energy_clean"]) for r in both],
        marker="o",
        markersize=3,
        color="black",
    )
    bottom.axhline(0, color="grey", linewidth=0.8)
    bottom.set_xlabel("epoch")
    _integer_epochs(bottom)
    bottom.set_ylabel("E(x_adv) - E(x)")
    bottom.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_energy_histogram(
    e_clean: torch.Tensor, e_adv: torch.Tensor, path: str | Path, *, title: str = "", bins: int = 40
) -> Path:
    """Histograms of per-sample E(x) of clean and of adversarial inputs, on shared bins."""
    new_figure = require_matplotlib()
    clean = e_clean.detach().float().cpu()
    adv = e_adv.detach().float().cpu()
    both = torch.cat([clean, adv])
    lo, hi = both.min().item(), both.max().item()
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1).tolist()
    fig = new_figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.hist(clean.numpy(), bins=edges, alpha=0.55, color=CLEAN_COLOR, label=f"clean (mean {clean.mean():.2f})")
    ax.hist(adv.numpy(), bins=edges, alpha=0.55, color=ADV_COLOR, label=f"PGD-adversarial (mean {adv.mean():.2f})")
    ax.set_xlabel("E(x) = -logsumexp f(x)")
    ax.set_ylabel("images")
    ax.set_title(title or "per-sample energy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def sample_energies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int = 10,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample E(x) of ``x`` and of its PGD-``steps`` (CE) adversarial examples, model in eval mode."""
    alpha = default_step(eps, steps) if steps > 0 else 0.0
    clean, adv = [], []
    with model_mode(model, training=False):
        for s in batched(len(x), batch_size):
            xb, yb = x[s], y[s]
            x_adv = pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, norm=norm) if steps > 0 else xb
            with torch.no_grad():
                clean.append(marginal_energy(model(xb).float()).cpu())
                adv.append(marginal_energy(model(x_adv).float()).cpu())
    return torch.cat(clean), torch.cat(adv)
