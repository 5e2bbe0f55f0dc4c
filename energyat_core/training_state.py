"""What a run saves after every epoch, and what ``--resume`` restores from it.

After each completed epoch the run directory receives, atomically and in this order:

- ``model.safetensors`` (and ``model_best.safetensors`` when the epoch is the best so
  far): the weights, with :func:`model_metadata` (the run config in document form, the
  classes, backbone, dataset and epoch);
- ``state.safetensors``: the resume point, a nested dict with the keys ``model``,
  ``optimizer``, ``scaler``, ``rng`` (one RNG state per rank), ``components`` (each step
  component's ``state_dict()`` by kind) and the :class:`Counters`.

The weights come first, so a crash in between leaves a state file that still names the
previous epoch, and ``--resume`` repeats the epoch whose state is missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from energyat_core import checkpoint as ckpt
from energyat_core.components import Component
from energyat_core.data import ImageData
from energyat_core.run_config import RunConfig
from energyat_core.run_dir import BEST_FILE, MODEL_FILE, STATE_FILE


@dataclass
class Counters:
    """Where a run stands: saved with every checkpoint, restored by a resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_robust: float = -1.0  # best per-epoch PGD accuracy so far
    elapsed: float = 0.0  # seconds spent in training epochs


@dataclass
class Trainable:
    """Everything a training step changes besides the counters and the RNGs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    components: dict[str, Component]


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (CPU, and the device's on CUDA)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def model_metadata(cfg: RunConfig, data: ImageData, epoch: int) -> dict[str, Any]:
    """The metadata of a run's model file: enough to rebuild the model without flags."""
    return {
        "config": cfg.to_json(),
        "num_classes": data.num_classes,
        "classes": data.classes,
        "backbone": cfg.spec("backbone"),
        "dataset": cfg.spec("dataset"),
        "epoch": epoch,
    }


def save_checkpoint(
    run_dir: Path,
    cfg: RunConfig,
    data: ImageData,
    trainable: Trainable,
    counters: Counters,
    rngs: list[dict[str, Any]],
    *,
    best: bool,
) -> None:
    """Write the weights (also as the best model if ``best``), then the resume point."""
    meta = model_metadata(cfg, data, counters.epoch)
    ckpt.save_model(run_dir / MODEL_FILE, trainable.model, meta)
    if best:
        ckpt.save_model(run_dir / BEST_FILE, trainable.model, meta)
    state = {
        "model": trainable.model.state_dict(),
        "optimizer": trainable.optimizer.state_dict(),
        "scaler": trainable.scaler.state_dict(),
        "rng": rngs,
        "components": {kind: c.state_dict() for kind, c in trainable.components.items()},
        **dataclasses.asdict(counters),
    }
    ckpt.save_state(run_dir / STATE_FILE, state, {"config": cfg.to_json(), "epoch": counters.epoch})


def load_checkpoint(run_dir: Path, trainable: Trainable, device: torch.device) -> tuple[Counters, list[dict[str, Any]]]:
    """Restore ``trainable`` from the run's resume point; its counters and the RNG states of its ranks."""
    state = ckpt.load_state(run_dir / STATE_FILE)
    model_state = {k: v.to(device) for k, v in state["model"].items()}
    ckpt.load_weights(trainable.model, model_state, str(run_dir))
    trainable.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        trainable.scaler.load_state_dict(state["scaler"])
    for kind, component in trainable.components.items():
        component.load_state_dict(state["components"].get(kind, {}))
    counters = Counters(
        epoch=int(state["epoch"]),
        step=int(state["step"]),
        best_robust=float(state["best_robust"]),
        elapsed=float(state["elapsed"]),
    )
    return counters, state["rng"]
