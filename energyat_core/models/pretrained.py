"""A local pretrained weights file into a timm model, with every fix-up said in one line.

Nothing here downloads: the file is read with safetensors, or with ``torch.load(...,
weights_only=True)`` for .pth/.bin files (:func:`energyat_core.checkpoint.read_weights_only`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energyat_core.checkpoint import dtype_fixups, read_weights_only, strip_leading
from energyat_core.errors import CheckpointError

#: keys under which training scripts commonly nest the weights
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net")
#: prefixes that wrappers (DDP, energyat's Classifier, training scripts) put before a model's keys
_PREFIXES = ("module.", "net.", "model.", "backbone.")


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


def _strip_prefix(state: dict[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor], str | None]:
    """Remove wrapper prefixes (``module.``, ``net.``, ...) when that makes more keys match; the prefix removed."""

    def strip(key: str, prefixes: tuple[str, ...]) -> str:
        return strip_leading(key, prefixes)[0]

    best, matched, removed = state, len(own.intersection(state)), None
    for prefixes in [(p,) for p in _PREFIXES] + [_PREFIXES]:  # one of them, or any run of them
        stripped = {strip(k, prefixes): v for k, v in state.items()}
        n = len(own.intersection(stripped))
        if n > matched:
            best, matched = stripped, n
            key = next(k for k in state if strip(k, prefixes) != k)
            removed = key[: len(key) - len(strip(key, prefixes))]
    return best, removed


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    model_name: str,
    in_chans: int = 3,
    *,
    reinit: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Load the weights in ``path`` into ``model`` (strict=False); one line for each fix-up made.

    Fix-ups, each returned as one line for the caller to print: a wrapper prefix removed
    (``module.``, ``net.``, ...); a classifier head whose shape differs from the model's
    skipped (re-initialised); a stem convolution trained on another number of input channels
    adapted with timm's ``adapt_input_conv``; the convolutions named in ``reinit`` (replaced
    by :func:`~energyat_core.models.stem.adapt_stem`) re-initialised when their shape differs;
    tensors of another precision converted; keys of the file the model lacks ignored, and
    tensors of the model the file lacks left at their initialisation. Raises
    :class:`CheckpointError` if the file is missing or unreadable, if no key matches the
    model, or if a body weight has the wrong shape.
    """
    source = f"pretrained file '{path}'"
    state = read_state_dict(path)
    own = model.state_dict()
    state, prefix = _strip_prefix(state, set(own))
    lines = [f"{source}: removed the prefix '{prefix}' from its keys"] if prefix else []
    heads = head_prefixes(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv") if isinstance(cfg, dict) else None
    first_convs = [first_conv] if isinstance(first_conv, str) else list(first_conv or [])

    def under(key: str, names: list[str] | tuple[str, ...]) -> bool:
        return any(key == n or key.startswith(n + ".") for n in names)

    usable: dict[str, torch.Tensor] = {}
    head_skipped: list[str] = []
    stem_skipped: list[str] = []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            usable[key] = value
            continue
        if under(key, heads):
            head_skipped.append(key)  # a head for another number of classes: keep the fresh one
            continue
        if under(key, reinit):
            stem_skipped.append(key)  # the stem was adapted to small images: its conv has another shape
            continue
        if any(key == f"{fc}.weight" for fc in first_convs) and value.dim() == 4 and value.shape[1] != in_chans:
            from timm.models import adapt_input_conv

            adapted = adapt_input_conv(in_chans, value.float()).to(target.dtype)
            if adapted.shape == target.shape:
                usable[key] = adapted
                lines.append(
                    f"{source}: '{key}' was trained on {value.shape[1]} input channels, adapted to {in_chans} "
                    "(timm's adapt_input_conv)"
                )
                continue
        raise CheckpointError(
            f"pretrained file '{path}' does not fit timm model '{model_name}': '{key}' has shape "
            f"{tuple(value.shape)}, the model expects {tuple(target.shape)}",
            "use weights saved from the same architecture (same model name and options, small_input included)",
        )
    if not usable:
        raise CheckpointError(
            f"no weight in pretrained file '{path}' matches timm model '{model_name}'",
            "check that the file holds weights of this architecture",
        )
    if head_skipped:
        have, want = state[head_skipped[0]].shape[0], own[head_skipped[0]].shape[0]
        lines.append(
            f"{source}: its classifier head has {have} outputs, the model {want} classes: head re-initialised "
            f"({', '.join(sorted(head_skipped))})"
        )
    if stem_skipped:
        key = min(stem_skipped, key=lambda k: (not k.endswith(".weight"), k))
        shapes = f"{tuple(state[key].shape)}, the adapted stem {tuple(own[key].shape)}"
        lines.append(f"{source}: '{key}' has shape {shapes}: re-initialised ({', '.join(sorted(stem_skipped))})")
    converted = dtype_fixups(own, usable, source)
    lines += [converted] if converted else []
    ignored = [k for k in state if k not in own]
    if ignored:
        lines.append(f"{source}: {len(ignored)} keys the model does not have were ignored (e.g. {ignored[:3]})")
    fresh = [k for k in own if k not in usable and k not in head_skipped and k not in stem_skipped]
    if fresh:
        lines.append(
            f"{source}: {len(fresh)} tensors of the model are not in it and keep their initialisation "
            f"(e.g. {fresh[:3]})"
        )
    model.load_state_dict(usable, strict=False)
    return lines
