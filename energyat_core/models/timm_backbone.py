"""Any ``timm`` image model as a backbone, optionally initialised from a local weights file.

``timm`` is imported when a model is built, not when this module is imported (the
import is slow). Nothing here downloads: ``pretrained=False`` always, and pretrained
weights come only from ``pretrained_file``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyat_core.checkpoint import read_weights_only
from energyat_core.components import Backbone
from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.options import option

#: model-name prefixes that make timm fetch a config or weights from the network
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:")
#: keys under which training scripts commonly nest the weights
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net")


class TimmBackbone(Backbone):
    """Any timm model by name, e.g. ``--backbone timm:convnext_tiny``; weights only from a local file.

    The model is created with ``pretrained=False`` and ``num_classes`` of the dataset.
    ``pretrained_file`` (a .safetensors, .pth or .bin state dict) initialises it; a
    classifier head whose shape does not fit the dataset is left freshly initialised.
    """

    @dataclass
    class Config:
        model: str = option("resnet18", "timm model name (see timm.list_models()), e.g. resnet18, convnext_tiny")
        pretrained_file: str | None = option(
            None, "local weights file (.safetensors, .pth or .bin) to start from; never downloaded"
        )
        in_chans: int = option(3, "input image channels", ge=1)
        drop_rate: float = option(0.0, "dropout before the classifier head (timm's drop_rate)", ge=0, lt=1)

        def check(self) -> None:
            if not self.model.strip():
                raise ValueError("model must name a timm model, e.g. resnet18")

    def build(self, num_classes: int) -> nn.Module:
        c = self.config
        name = c.model.strip()
        import timm  # slow import, deliberately lazy

        if name.lower().startswith(_REMOTE_PREFIXES):
            raise ConfigError(
                f"timm model '{name}' would be fetched from the Hugging Face Hub",
                "energyat does not download models; use a built-in timm architecture name and "
                "--set backbone.pretrained_file=<local weights file>",
            )
        if not timm.is_model(name):
            raise ConfigError(
                f"unknown timm model '{name}'",
                "see timm.list_models() for names, e.g. timm:resnet18",
            )
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": c.in_chans}
        if c.drop_rate > 0:
            kwargs["drop_rate"] = c.drop_rate
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"timm model '{name}' does not accept these options ({err})",
                "leave drop_rate at 0 or pick another model",
            ) from None
        if c.pretrained_file:
            load_pretrained(model, c.pretrained_file, name, c.in_chans)
        return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file (safetensors, or a torch pickle loaded with ``weights_only``)."""
    file = Path(path).expanduser()
    fix = "pass an existing local .safetensors, .pth or .bin file to --set backbone.pretrained_file=..."
    if not file.is_file():
        raise CheckpointError(f"pretrained file '{file}' does not exist", fix)
    raw = read_weights_only(file, "pretrained weights")
    state = _unwrap(raw)
    if state is None:
        raise CheckpointError(
            f"pretrained file '{file}' does not hold a state dict of tensors",
            "save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file",
        )
    return state


def _unwrap(raw: Any) -> dict[str, torch.Tensor] | None:
    """The tensor dict in ``raw``, looking one level into the usual wrapper keys."""
    if not isinstance(raw, dict):
        return None
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in _WRAPPER_KEYS:
        if isinstance(raw.get(key), dict):
            inner = _unwrap(raw[key])
            if inner:
                return inner
    return None


def head_prefixes(model: nn.Module) -> list[str]:
    """Module names of the classifier head(s) of a timm model, e.g. ``["fc"]`` or ``["head.fc"]``."""
    names: list[str] = []
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(classifier, str):
        names.append(classifier)
    elif isinstance(classifier, (list, tuple)):
        names.extend(str(n) for n in classifier)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:  # some models need arguments or have no single head
            head = None
        if isinstance(head, nn.Module):
            names.extend(name for name, m in model.named_modules() if m is head and name)
    return list(dict.fromkeys(names))


def _strip_prefix(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``net.``, ``model.``) when that makes keys match."""
    matched = len(own.intersection(state))
    for prefix in ("module.", "net.", "model.", "backbone."):
        stripped = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
        n = len(own.intersection(stripped))
        if n > matched:
            state, matched = stripped, n
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], model_name: str, in_chans: int = 3) -> list[str]:
    """Load the weights in ``path`` into ``model`` (strict=False); return the keys left untouched.

    A classifier head whose shape differs from the model's is skipped (trained afresh);
    a stem convolution trained on another number of input channels is adapted with timm's
    ``adapt_input_conv``. Raises :class:`CheckpointError` if the file is missing or
    unreadable, if no key matches the model, or if a body weight has the wrong shape.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state = _strip_prefix(state, set(own))
    heads = head_prefixes(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv") if isinstance(cfg, dict) else None
    first_convs = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])

    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            usable[key] = value
            continue
        if any(key == h or key.startswith(h + ".") for h in heads):
            continue  # a head for another number of classes: keep the fresh one
        if any(key == f"{fc}.weight" for fc in first_convs) and value.dim() == 4 and value.shape[1] != in_chans:
            from timm.models import adapt_input_conv

            adapted = adapt_input_conv(in_chans, value.float()).to(target.dtype)
            if adapted.shape == target.shape:
                usable[key] = adapted
                continue
        raise CheckpointError(
            f"pretrained file '{path}' does not fit timm model '{model_name}': '{key}' has shape "
            f"{tuple(value.shape)}, the model expects {tuple(target.shape)}",
            "use weights saved from the same architecture (same model name and options)",
        )
    if not usable:
        raise CheckpointError(
            f"no weight in pretrained file '{path}' matches timm model '{model_name}'",
            "check that the file holds weights of this architecture",
        )
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
