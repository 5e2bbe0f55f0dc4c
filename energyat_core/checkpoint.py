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

(Over 300 lines for a reason: every check a file from someone else must pass before a tensor of
it is used, and every fix-up made to fit it (a prefix removed, a precision converted, each said in
one ``warning:`` line), lives next to the format it checks.)
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from energyat_core.errors import CheckpointError
from energyat_core.run_dir import temporary_path

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
    """Write a safetensors file via a temporary file, fsync and an atomic rename.

    A crash leaves either the old file or the new one, plus at most a ``*.tmp`` file that
    the next start of a run removes (:func:`energyat_core.run_dir.clean_leftovers`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = os.fstat(fd).st_mode & 0o777  # what the umask allows (safetensors itself writes 0600)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist", "check the path (a run directory holds model.safetensors)"
        )
    if not path.is_file():  # a folder, a FIFO (opening it would block), a device, ...
        raise CheckpointError(
            f"checkpoint '{path}' is not a regular file ({_file_kind(path)})",
            "point at a .safetensors file (a run directory holds model.safetensors)",
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({str(err).splitlines()[0][:120] if str(err) else err!r})",
            "it may be truncated or another format; re-save with safetensors.torch.save_file(model.state_dict(), path)",
        ) from None
    return tensors, metadata


def _file_kind(path: Path) -> str:
    """What ``path`` is, in words, when it is not a regular file."""
    mode = path.stat().st_mode
    kinds = {
        "a folder": stat.S_ISDIR,
        "a FIFO": stat.S_ISFIFO,
        "a socket": stat.S_ISSOCK,
        "a character device": stat.S_ISCHR,
        "a block device": stat.S_ISBLK,
    }
    return next((name for name, test in kinds.items() if test(mode)), "not a plain file")


def metadata_json(metadata: dict[str, str], key: str, path: str | os.PathLike) -> Any:
    """The JSON value stored under ``key`` in a checkpoint's metadata; CheckpointError naming the file if bad."""
    try:
        return json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(
            f"the metadata '{key}' of '{path}' is not valid JSON ({err.__class__.__name__}: {str(err)[:80]})",
            "the file is damaged or was not written by energyat; use another checkpoint",
        ) from None


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
    """The nested state :func:`save_state` wrote; CheckpointError if it is not such a state."""
    tensors, metadata = read_safetensors(path)
    if "skeleton" not in metadata:
        raise CheckpointError(
            f"'{path}' is not an energyat training-state file", "resume from a run directory that energyat wrote"
        )
    for key in metadata:  # save_state JSON-encodes every entry but the format tag
        if key != "format":
            metadata_json(metadata, key, path)
    damaged = CheckpointError(
        f"the training state in '{path}' is damaged (its layout does not match its tensors)",
        "use a run directory that energyat wrote, or start the run anew",
    )
    try:
        state = unflatten_state(tensors, metadata_json(metadata, "skeleton", path))
    except (KeyError, TypeError, ValueError, RecursionError):
        raise damaged from None
    if not isinstance(state, dict):
        raise damaged
    return state


def strip_leading(key: str, prefixes: tuple[str, ...]) -> tuple[str, list[str]]:
    """``key`` without any run of ``prefixes`` at its start (``module.net.fc`` -> ``fc``); the prefixes removed."""
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
                removed.append(prefix)
    return key, removed


def strip_prefixes(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` without the ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) prefixes.

    Returns the renamed state and one line per prefix removed, naming ``source`` and the count of keys.
    """
    counts = dict.fromkeys(STRIP_PREFIXES, 0)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, removed = strip_leading(key, STRIP_PREFIXES)
        for prefix in removed:
            counts[prefix] += 1
        if "._orig_mod." in name:
            name = name.replace("._orig_mod.", ".")
            counts["_orig_mod."] += 1
        out[name] = value
    wrappers = {"module.": "DistributedDataParallel", "_orig_mod.": "torch.compile"}
    lines = [
        f"checkpoint '{source}': removed the prefix '{prefix}' (a {wrappers[prefix]} wrapper) from {n} keys"
        for prefix, n in counts.items()
        if n
    ]
    return out, lines


def _module_of(key: str) -> str:
    """``net.fc`` of ``net.fc.weight``."""
    return key.rpartition(".")[0]


#: the buffers of a Classifier that hold its input normalisation (see docs/models.md)
NORMALIZATION_KEYS = ("mean", "std")


def load_weights(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    hint: str = "",
    fixups: list[str] | None = None,
) -> None:
    """Load ``state`` into ``model`` (a ``Classifier``), checking architecture and classes.

    Accepts a full classifier state dict (as energyat saves it: ``net.*`` and the ``mean``
    and ``std`` buffers, which may be left out to keep the model's normalisation) or a plain
    backbone state dict saved by anyone (then loaded into ``model.net``). Fix-ups, one line
    each: ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed; another
    precision of the same kind (float16 into float32) is converted. The lines are appended
    to ``fixups`` when it is given, else printed as ``warning:`` lines on stderr once the
    weights are in. Tensors of another kind than the model's (integers or booleans for float
    weights) and NaN values are refused.
    """
    state, lines = strip_prefixes(state, source)
    target: torch.nn.Module = model
    own = model.state_dict()
    optional: set[str] = set(NORMALIZATION_KEYS) & set(own)
    if not any(k in own for k in state) and hasattr(model, "net"):
        target = model.net  # type: ignore[assignment]  # a plain backbone state dict
        own = target.state_dict()
        optional = set()
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    fix = hint or "build the model with the backbone and dataset the checkpoint was trained with"
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{source}' does not fit this architecture: {len(missing)} missing keys"
            f" (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            fix,
        )
    body = [k for k in own if k not in optional]
    head = _module_of(body[-1]) if body else ""  # the output layer: the last in a state dict
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
    converted = dtype_fixups(own, state, f"checkpoint '{source}'")
    lines += [converted] if converted else []
    target.load_state_dict(state, strict=not (optional - set(state)))
    if fixups is not None:
        fixups.extend(lines)
    else:
        warn_lines(lines)


def warn_lines(lines: list[str]) -> None:
    """Print each line as ``warning: LINE`` on stderr (a fix-up made to a file, a model that may not train well)."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _dtype_kind(dtype: torch.dtype) -> str:
    """bool, complex, float or integer: tensors of one kind convert into each other without losing their meaning."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def dtype_fixups(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> str:
    """Refuse tensors of another kind than the model's (int8 or bool for float weights) and NaN weights.

    ``what`` names the file (``checkpoint 'PATH'``). Returns one line naming the tensors whose
    precision differs (e.g. float16 into float32: converted by ``load_state_dict``), or "" if
    every dtype matches.
    """
    converted: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for key, value in state.items():
        want = own[key].dtype
        if value.dtype == want:
            continue
        if _dtype_kind(value.dtype) != _dtype_kind(want):
            raise CheckpointError(
                f"{what} holds {_name(value.dtype)} values at '{key}', the model {_name(want)}",
                "load weights saved from a model of this architecture (a quantised or damaged file cannot be loaded)",
            )
        converted.setdefault((value.dtype, want), []).append(key)
    for key, value in state.items():
        if value.is_floating_point() and bool(torch.isnan(value).any()):
            raise CheckpointError(
                f"{what} holds NaN values at '{key}'",
                "the model diverged before it was saved; use an earlier checkpoint",
            )
    parts = [
        f"{len(keys)} {_name(have)} tensors (e.g. '{keys[0]}') to {_name(want)}"
        for (have, want), keys in converted.items()
    ]
    return f"{what}: converted {'; '.join(parts)}" if parts else ""


def _name(dtype: torch.dtype) -> str:
    """``float16`` for ``torch.float16``."""
    return str(dtype).removeprefix("torch.")


def weights_load_failure(err: BaseException) -> str:
    """One line on why a weights file could not be read; a refused pickle says so, not how to unpickle it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
        first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        first = first.split(". ")[0][:120]
        return "it holds Python objects besides tensors, which are never unpickled" + (f" ({first})" if first else "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # load_state_dict's errors announce a list on their first line
    return (f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0])[:160]


def read_weights_only(path: str | os.PathLike[str], what: str = "weights") -> Any:
    """The content of a weights file from anyone, never unpickling anything but tensors.

    ``.safetensors`` files are read with safetensors; anything else (``.pth``, ``.bin``) with
    ``torch.load(..., weights_only=True)``. A file that cannot be read that way is a one-line
    :class:`CheckpointError` saying why (a pickle with Python objects is named as such).
    """
    file = Path(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it better
            warnings.simplefilter("ignore")
            return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors and OS errors have no common base
        kind = "safetensors" if file.suffix == ".safetensors" else "weights-only torch"
        raise CheckpointError(
            f"'{file}' is not a {kind} file of {what} ({weights_load_failure(err)})",
            "pass a plain state dict: .safetensors, or .pth/.bin of tensors saved with torch.save(state_dict, path)",
        ) from None
