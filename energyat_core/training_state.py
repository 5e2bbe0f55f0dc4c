"""What a run saves after every epoch, and what ``--resume`` restores from it.

After each completed epoch the run directory receives, in this order (each file atomically,
see :mod:`energyat_core.run_dir` for the rules):

- ``model.safetensors`` (and ``model_best.safetensors`` when the epoch is the best so
  far): the weights, with :func:`model_metadata` (the run config in document form, the
  classes, backbone, dataset and epoch);
- the epoch's line of ``metrics.jsonl``;
- ``state.safetensors``: the resume point, a nested dict with the keys ``model``,
  ``optimizer``, ``scaler``, ``rng`` (one RNG state per rank), ``components`` (each step
  component's ``state_dict()`` by kind) and the :class:`Counters`.

The state file comes last, so it commits the epoch: a kill before it leaves a state file
that still names the previous epoch, ``--resume`` drops the metrics lines after that
epoch (and a torn last line) and repeats the epoch whose state is missing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from energyat_core import checkpoint as ckpt
from energyat_core.components import Component
from energyat_core.data import ImageData
from energyat_core.errors import CheckpointError
from energyat_core.run_config import RunConfig
from energyat_core.run_dir import BEST_FILE, MODEL_FILE, STATE_FILE, append_metrics


@dataclass
class Counters:
    """Where a run stands: saved with every checkpoint, restored by a resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_robust: float = -1.0  # best per-epoch PGD accuracy so far
    elapsed: float = 0.0  # seconds spent in training epochs
    early_stop_acc: float = 0.0  # --early-stop: the last epoch's PGD-5 accuracy on its first training batch


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
    record: dict[str, Any],
) -> None:
    """Write the weights (also as the best model if ``best``), the epoch's metrics ``record``, then the resume point."""
    meta = model_metadata(cfg, data, counters.epoch)
    ckpt.save_model(run_dir / MODEL_FILE, trainable.model, meta)
    if best:
        ckpt.save_model(run_dir / BEST_FILE, trainable.model, meta)
    append_metrics(run_dir, record)
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
    counters = checked_counters(state, str(run_dir / STATE_FILE))
    model_state = {k: v.to(device) for k, v in state["model"].items()}
    ckpt.load_weights(trainable.model, model_state, str(run_dir))
    try:
        trainable.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            trainable.scaler.load_state_dict(state["scaler"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:  # torch's checks of the dicts
        raise CheckpointError(
            f"the optimiser state in '{run_dir / STATE_FILE}' does not fit this run ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:100] if str(err) else '-'})",
            "the state file is damaged or belongs to another run; resume from another copy or start anew",
        ) from None
    for kind, component in trainable.components.items():
        component.load_state_dict(state["components"].get(kind, {}))
    return counters, state["rng"]


#: what a state file must hold besides the counters, and its type
STATE_PARTS = {"model": dict, "optimizer": dict, "rng": list, "components": dict}
#: the counters' bounds: name -> (lowest, highest or None); epoch and step are integers
COUNTER_BOUNDS = {
    "epoch": (0, None),
    "step": (0, None),
    "best_robust": (-1.0, 1.0),
    "elapsed": (0.0, None),
    "early_stop_acc": (0.0, 1.0),
}
#: counters added after the first release: a state file without them takes the default
LATER_COUNTERS = {"early_stop_acc": 0.0}


def checked_counters(state: dict[str, Any], source: str) -> Counters:
    """The :class:`Counters` of a loaded state file; CheckpointError if a part is missing or a counter is nonsense."""
    fix = "the state file is damaged or was not written by energyat; resume from another copy or start anew"
    valid = {key: isinstance(state.get(key), kind) for key, kind in STATE_PARTS.items()}
    valid["model"] = valid["model"] and all(isinstance(v, torch.Tensor) for v in state["model"].values())
    rngs = state["rng"] if valid["rng"] else []
    cpu = torch.get_rng_state()  # what every saved CPU generator state looks like
    valid["rng"] = bool(rngs) and all(
        isinstance(r, dict)
        and isinstance(r.get("cpu"), torch.Tensor)
        and r["cpu"].shape == cpu.shape
        and r["cpu"].dtype == cpu.dtype
        for r in rngs
    )
    for key, ok in valid.items():
        if not ok:
            raise CheckpointError(f"the training state '{source}' has no valid '{key}'", fix)
    values: dict[str, Any] = {}
    for name, (low, high) in COUNTER_BOUNDS.items():
        value: Any = state.get(name, LATER_COUNTERS.get(name))
        integer = isinstance(low, int)
        number = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
        if isinstance(value, bool) or not number or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            rule = f"{'an integer' if integer else 'a number'} {bounds}"
            raise CheckpointError(f"the training state '{source}' holds {name} = {value!r}; it must be {rule}", fix)
        values[name] = value
    return Counters(**values)
