"""RobustBench checkpoints: read from a local file without unpickling anything but tensors, loaded strictly.

RobustBench's model files (``models/cifar10/Linf/NAME.pt``) are torch pickles of a dict:
``{'state_dict': {...}}`` or a plain state dict (``{'last': {...}}`` for a few), keys
possibly prefixed ``module.`` (DataParallel) or ``model.``. ``robustbench.utils.load_model``
reads them with a bare ``torch.load``; here they are read with ``torch.load(...,
weights_only=True)`` (or safetensors), so a file holding Python objects is refused in one line.
Every fix-up (a wrapper key opened, a prefix removed, a precision converted, a normalisation
buffer kept) is said in one ``warning:`` line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyat_core.api import CheckpointError, read_weights_only

#: keys under which RobustBench's files nest the state dict, in the order its load_model opens them
WRAPPERS = ("last", "state_dict")
#: key prefixes its load_model removes
PREFIXES = ("module.", "model.")
#: buffers that some RobustBench architectures set in their constructor and some files lack (its known failures)
OWN_BUFFERS = ("mu", "sigma", "mean", "std")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict in a RobustBench checkpoint file, and the fix-ups made to reach it (one line each)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"RobustBench checkpoint '{file}' does not exist or is not a file",
            "download it yourself (energyat downloads nothing) and give its local path: --set backbone.checkpoint=FILE",
        )
    raw: Any = read_weights_only(file, "RobustBench weights")
    lines: list[str] = []
    for key in WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            if key != "state_dict":  # RobustBench's usual layout goes without saying
                lines.append(f"checkpoint '{file}': took the weights under its key '{key}'")
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"checkpoint '{file}' holds a {type(raw).__name__}, not a state dict",
            "give a RobustBench model file: a dict of tensors, or {'state_dict': dict of tensors}",
        )
    state = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        keys = ", ".join(repr(k) for k in list(raw)[:6])
        raise CheckpointError(
            f"checkpoint '{file}' holds no tensors at its top level (keys: {keys or 'none'})",
            "give a RobustBench model file: a dict of tensors, or {'state_dict': dict of tensors}",
        )
    if len(state) != len(raw):
        lines.append(f"checkpoint '{file}': ignored {len(raw) - len(state)} entries that are not tensors")
    for prefix in PREFIXES:
        n = sum(k.startswith(prefix) for k in state)
        if n:
            state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
            lines.append(f"checkpoint '{file}': removed the prefix '{prefix}' from {n} keys")
    return state, lines


def load_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load a RobustBench checkpoint into ``model`` (strictly); return the fix-up lines."""
    state, lines = read_checkpoint(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    kept = [k for k in missing if k.rpartition(".")[2] in OWN_BUFFERS and k not in dict(model.named_parameters())]
    unexpected = [k for k in state if k not in own]
    fix = "give the model name or architecture call the checkpoint was saved from (see RobustBench's model zoo)"
    if unexpected or len(missing) > len(kept):
        lost = [k for k in missing if k not in kept]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit the model: {len(lost)} missing keys (e.g. {lost[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            fix,
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"checkpoint '{path}' has shape {tuple(value.shape)} at '{key}', the model {tuple(own[key].shape)}", fix
            )
        if value.is_floating_point() != own[key].is_floating_point():
            raise CheckpointError(f"checkpoint '{path}' holds {value.dtype} values at '{key}'", fix)
        if value.is_floating_point() and bool(torch.isnan(value).any()):
            raise CheckpointError(f"checkpoint '{path}' holds NaN values at '{key}'", "use another checkpoint")
    cast = sorted({f"{state[k].dtype} to {own[k].dtype}" for k in state if state[k].dtype != own[k].dtype})
    if cast:
        lines.append(f"checkpoint '{path}': converted tensors from {', '.join(cast)}")
    if kept:
        lines.append(f"checkpoint '{path}' lacks {kept}: kept the values the architecture sets itself")
    model.load_state_dict(state, strict=False)
    return lines


def warn(lines: list[str]) -> None:
    """Print each fix-up as ``warning: LINE`` on stderr."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
