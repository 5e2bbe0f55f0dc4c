"""A finished (or running) run directory: reading its config, model and data back.

Commands that work on a trained model (``eval``, ``generate``, ``plot``) start here::

    run = load_run("runs/pgd-at", device=torch.device("cpu"))
    run.model, run.cfg, run.data
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from energyat_core import checkpoint as ckpt
from energyat_core.data import ImageData
from energyat_core.engine import BEST_FILE, build_data, build_model
from energyat_core.errors import CheckpointError
from energyat_core.registry import Registry, get_registry
from energyat_core.runconfig import RunConfig


@dataclass
class LoadedRun:
    cfg: RunConfig
    model: torch.nn.Module
    data: ImageData
    source: str


def checkpoint_path(run_dir: Path, which: str = "model") -> Path:
    """``model`` (last epoch) or ``best`` (best per-epoch PGD accuracy)."""
    if which not in ("model", "best"):
        raise CheckpointError(f"unknown checkpoint '{which}'", "use --checkpoint model or --checkpoint best")
    return run_dir / (ckpt.MODEL_FILE if which == "model" else BEST_FILE)


def load_run(
    run_dir: str | Path,
    *,
    which: str = "model",
    device: torch.device | None = None,
    registry: Registry | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> LoadedRun:
    """Rebuild a run's model from the config stored in its checkpoint and load the weights."""
    registry = registry or get_registry()
    device = device or torch.device("cpu")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run directory '{run_dir}' does not exist", "pass the --out directory of `energyat train`"
        )
    path = checkpoint_path(run_dir, which)
    if not path.exists():
        raise CheckpointError(f"'{run_dir}' holds no {path.name} yet", "train at least one epoch, or check the path")
    tensors, meta = ckpt.read_safetensors(path)
    if "config" not in meta:
        raise CheckpointError(
            f"'{path}' carries no energyat run config", "evaluate it with --backbone, --weights and --dataset"
        )
    values = json.loads(meta["config"])
    if isinstance(values, str):
        values = json.loads(values)
    cfg = RunConfig.from_dict(values)
    if dataset is not None:
        cfg.dataset = dataset
        cfg.options = {k: v for k, v in cfg.options.items() if k != "dataset"}
    if data_dir is not None:
        cfg.data_dir = data_dir
    data = build_data(registry, cfg)
    model = build_model(registry, cfg, data, device)
    hint = f"the checkpoint was trained with backbone '{cfg.backbone}' on '{cfg.dataset}'"
    ckpt.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, str(path), hint)
    model.eval()
    return LoadedRun(cfg, model, data, str(path))


def load_weights_file(
    weights: str | Path,
    *,
    backbone: str,
    dataset: str,
    data_dir: str | None = None,
    device: torch.device | None = None,
    registry: Registry | None = None,
    backbone_options: dict | None = None,
) -> LoadedRun:
    """A plain state dict saved by anyone (safetensors), with the architecture named by the user."""
    registry = registry or get_registry()
    device = device or torch.device("cpu")
    cfg = RunConfig.from_dict(
        {
            "backbone": backbone,
            "dataset": dataset,
            "data_dir": data_dir,
            "options": {"backbone": backbone_options or {}},
        }
    )
    data = build_data(registry, cfg)
    model = build_model(registry, cfg, data, device)
    tensors, _ = ckpt.read_safetensors(weights)
    ckpt.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, str(weights))
    model.eval()
    return LoadedRun(cfg, model, data, str(weights))
