"""The checkpoint file format: safetensors only (no pickle), written atomically.

Two kinds of file:

- a model file (:func:`save_model`): a ``state_dict`` with JSON metadata (for a run: the
  full run config, the class count, backbone and epoch, so that ``energyat eval RUN_DIR``
  needs no flags);
- a state file (:func:`save_state`): nested state (optimiser, counters, RNG states, the
  state of stateful components) flattened to tensors plus a JSON skeleton in the metadata.

Both are written to a temporary file in the same directory and renamed over the old one,
so a crash never leaves a half-written checkpoint. What a run saves in them, and when, is
:mod:`energyat_core.training_state`; where, :mod:`energyat_core.run_dir`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from energyat_core.errors import CheckpointError

FORMAT = "energyat-1"
STRIP_PREFIXES = ("module.", "_orig_mod.")


# -- nested state <-> flat tensors ----------------------------------------------------
def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested dicts/lists of tensors and plain values into tensors and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            key = path or "value"
            tensors[key] = obj.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}" if path else str(k))] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            kind = "__list__" if isinstance(obj, list) else "__tuple__"
            return {kind: [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at '{path}'")

    return tensors, walk(state, "")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`flatten_state`."""

    def build(obj: Any) -> Any:
        if isinstance(obj, dict):
            if "__tensor__" in obj:
                return tensors[obj["__tensor__"]]
            if "__dict__" in obj:
                return {k: build(v) for k, v in obj["__dict__"]}
            if "__list__" in obj:
                return [build(v) for v in obj["__list__"]]
            if "__tuple__" in obj:
                return tuple(build(v) for v in obj["__tuple__"])
        return obj

    return build(skeleton)


# -- files ------------------------------------------------------------------------------
def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist", "check the path (a run directory holds model.safetensors)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({str(err).splitlines()[0][:120]})",
            "it may be truncated or another format; re-save with safetensors.torch.save_file(model.state_dict(), path)",
        ) from None
    return tensors, metadata


def save_model(path: str | os.PathLike, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    """Save a model's ``state_dict`` with JSON-encoded metadata."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    atomic_save(tensors, path, meta)


def save_state(path: str | os.PathLike, state: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Save nested training state (optimiser, RNG, components) as one safetensors file."""
    tensors, skeleton = flatten_state(state)
    meta = {"format": FORMAT, "skeleton": json.dumps(skeleton)}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    atomic_save(tensors, path, meta)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The nested state :func:`save_state` wrote."""
    tensors, metadata = read_safetensors(path)
    if "skeleton" not in metadata:
        raise CheckpointError(
            f"'{path}' is not an energyat training-state file", "resume from a run directory that energyat wrote"
        )
    return unflatten_state(tensors, json.loads(metadata["skeleton"]))


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def _module_of(key: str) -> str:
    """``net.fc`` of ``net.fc.weight``."""
    return key.rpartition(".")[0]


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` into ``model`` (a ``Classifier``), checking architecture and classes.

    Accepts a full classifier state dict (as energyat saves it) or a plain backbone state
    dict saved by anyone (then loaded into ``model.net``); ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes are removed.
    """
    state = {_strip(k): v for k, v in state.items()}
    target: torch.nn.Module = model
    own = model.state_dict()
    if not any(k in own for k in state) and hasattr(model, "net"):
        target = model.net  # type: ignore[assignment]  # a plain backbone state dict
        own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    fix = hint or "build the model with the backbone and dataset the checkpoint was trained with"
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{source}' does not fit this architecture: {len(missing)} missing keys"
            f" (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            fix,
        )
    head = _module_of(next(reversed(own))) if own else ""  # the output layer: the last in a state dict
    for key, value in state.items():
        if own[key].shape != value.shape:
            if _module_of(key) == head and value.ndim >= 1 and value.shape[1:] == own[key].shape[1:]:
                raise CheckpointError(
                    f"checkpoint '{source}' has {value.shape[0]} classes at '{key}', the model {own[key].shape[0]}",
                    "use the dataset the checkpoint was trained on (--dataset)",
                )
            raise CheckpointError(
                f"checkpoint '{source}' has shape {tuple(value.shape)} at '{key}', the model {tuple(own[key].shape)}",
                fix,
            )
    target.load_state_dict(state)
