"""Resumable AutoAttack: per-point outcomes of each attack, kept in the run directory.

After every batch the evaluator writes which points each attack has decided and which
of them it fooled to ``RUN_DIR/autoattack_state.safetensors`` (atomically), under a key
that hashes the attack configuration, the evaluated points and the model's weights
(:func:`fingerprint`, :func:`model_fingerprint`): an interrupted ``energyat eval`` run
again skips every (attack, point) pair already done, and a state never outlives a
retrained model or other points.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyat_core.api import ConfigError, atomic_save, read_safetensors

STATE_FILE = "autoattack_state.safetensors"
STATE_FORMAT = "energyat-autoattack-1"


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the raw bytes (and shapes and dtypes) of ``tensors``."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's weights and buffers, so that a state never outlives a retrained model."""
    state = model.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(fingerprint(state[key]).encode())
    return h.hexdigest()


def state_key(describe: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    """The key of one evaluation: its attack configuration, points and model."""
    text = json.dumps(describe, sort_keys=True) + fingerprint(x, y) + model_fingerprint(model)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class AttackState:
    """Per-point outcomes of each attack, for one configuration key, persisted in a safetensors file.

    For attack ``a``: ``done[a]`` marks the points whose outcome under ``a`` is known, and
    ``fooled[a]`` those of them that ``a`` misclassified. Entries of other keys in the same
    file (another model, other points, another configuration) are kept untouched.
    """

    def __init__(self, path: Path | None, key: str, n: int, describe: dict[str, Any]) -> None:
        self.path, self.key, self.n, self.describe = path, key, n, describe
        self.done: dict[str, torch.Tensor] = {}
        self.fooled: dict[str, torch.Tensor] = {}
        self._others: dict[str, torch.Tensor] = {}
        self._other_configs: dict[str, Any] = {}
        if path is not None and path.exists():
            tensors, meta = read_safetensors(path)
            if meta.get("format") != STATE_FORMAT:
                raise ConfigError(
                    f"'{path}' is not an energyat AutoAttack state file",
                    "move it away, or pass --set evaluator.autoattack.resume=false",
                )
            configs = json.loads(meta.get("configs", "{}"))
            prefix = f"{key}/"
            for name, t in tensors.items():
                if name.startswith(prefix):
                    attack, _, field = name[len(prefix) :].rpartition("/")
                    if t.shape == (n,):
                        getattr(self, field)[attack] = t.bool()
                else:
                    self._others[name] = t
            self._other_configs = {k: v for k, v in configs.items() if k != key}

    def masks(self, attack: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(done, fooled)`` of ``attack`` on ``device`` (all false for an attack not started)."""
        zeros = torch.zeros(self.n, dtype=torch.bool)
        self.done.setdefault(attack, zeros.clone())
        self.fooled.setdefault(attack, zeros.clone())
        return self.done[attack].to(device), self.fooled[attack].to(device)

    def update(self, attack: str, done: torch.Tensor, fooled: torch.Tensor) -> None:
        """Record ``attack``'s masks and write the file."""
        self.done[attack] = done.detach().cpu().clone()
        self.fooled[attack] = fooled.detach().cpu().clone()
        self.save()

    def save(self) -> None:
        """Write every key's masks atomically (nothing without a path)."""
        if self.path is None:
            return
        tensors = dict(self._others)
        for attack in self.done:
            tensors[f"{self.key}/{attack}/done"] = self.done[attack]
            tensors[f"{self.key}/{attack}/fooled"] = self.fooled[attack]
        configs = {**self._other_configs, self.key: self.describe}
        atomic_save(tensors, self.path, {"format": STATE_FORMAT, "configs": json.dumps(configs)})
