"""Reading a trained model back: a run directory, or a plain weights file.

Commands that work on a trained model (``eval``, ``generate``, ``plot``) start here::

    run = load_run("runs/pgd-at", device=torch.device("cpu"))
    run.model, run.cfg, run.data

Only the backbone and the dataset of the stored config are resolved, so a run can be
evaluated where the plugins it was trained with (its attack, loss, ...) are not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from energyat_core import checkpoint as ckpt
from energyat_core.build import build_data, build_model
from energyat_core.components import Backbone
from energyat_core.data import ImageData
from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.options import as_dict
from energyat_core.registry import Registry, get_registry
from energyat_core.run_config import Part, RunConfig
from energyat_core.run_dir import checkpoint_path

#: the parts of a run that rebuild its model and data
MODEL_KINDS = ("backbone", "dataset")
#: what JSON calls the values ``json.loads`` returns
_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


@dataclass
class LoadedRun:
    """A trained model with the config and data it was trained with; ``source`` is the weights file."""

    cfg: RunConfig
    model: torch.nn.Module
    data: ImageData
    source: str


def load_run(
    run_dir: str | Path,
    *,
    which: str = "model",
    device: torch.device | None = None,
    registry: Registry | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> LoadedRun:
    """Rebuild a run's model from the config stored in its checkpoint and load the weights.

    ``dataset`` and ``data_dir`` replace the run's (e.g. to evaluate on another copy of the data).
    """
    registry = registry or get_registry()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            f"'{run_dir}' is a file, not a run directory",
            "pass the --out directory of `energyat train` (a weights file: --weights FILE --backbone --dataset)",
        )
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
    cfg = stored_config(meta, path, registry)
    if dataset is not None:
        entry, config = registry.config("dataset", dataset, {})
        cfg.parts["dataset"] = Part(entry.name, as_dict(config), config)
    if data_dir is not None:
        cfg.data_dir = data_dir
    hint = f"the checkpoint was trained with backbone '{cfg.spec('backbone')}' on '{cfg.spec('dataset')}'"
    return _loaded(cfg, registry, device, tensors, str(path), hint, from_metadata=True)


def stored_config(meta: dict[str, str], path: Path, registry: Registry) -> RunConfig:
    """The run config in a model file's metadata (model and data parts resolved); CheckpointError naming the file."""
    values = ckpt.metadata_json(meta, "config", path)
    if isinstance(values, str):  # written JSON-encoded twice
        values = ckpt.metadata_json({"config": values}, "config", path)
    if not isinstance(values, dict):
        raise CheckpointError(
            f"the run config stored in '{path}' is a JSON {_JSON_NAMES.get(type(values), 'value')}, not an object",
            "the file is damaged or was not written by energyat; evaluate it with --weights, --backbone and --dataset",
        )
    try:
        return RunConfig.from_dict(values, registry, kinds=MODEL_KINDS)
    except ConfigError as err:
        raise CheckpointError(f"the run config stored in '{path}': {err.problem}", err.fix) from None


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
    document = {"backbone": {"name": backbone, **(backbone_options or {})}, "dataset": dataset, "data_dir": data_dir}
    cfg = RunConfig.from_dict(document, registry, kinds=MODEL_KINDS)
    tensors, _ = ckpt.read_safetensors(weights)
    return _loaded(cfg, registry, device, tensors, str(weights))


def _loaded(
    cfg: RunConfig,
    registry: Registry,
    device: torch.device | None,
    tensors: dict[str, torch.Tensor],
    source: str,
    hint: str = "",
    from_metadata: bool = False,
) -> LoadedRun:
    """Build the model of ``cfg``, load ``tensors`` into it and put it in eval mode.

    ``from_metadata``: ``cfg`` comes from the file, not from the user; its size is checked first.
    """
    device = device or torch.device("cpu")
    data = build_data(registry, cfg)
    if from_metadata:
        _check_size(registry, cfg, data, tensors, source, hint)
    model = build_model(registry, cfg, data, device)
    ckpt.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, source, hint)
    model.eval()
    return LoadedRun(cfg, model, data, source)


def _check_size(
    registry: Registry, cfg: RunConfig, data: ImageData, tensors: dict[str, torch.Tensor], source: str, hint: str
) -> None:
    """Refuse a model larger than the file's tensors before allocating it.

    The config in a checkpoint's metadata may come from anyone and ask for any width or
    depth; the backbone is first built on the ``meta`` device (no memory), and it must not
    need more values than the file holds, or the file could not be loaded into it anyway.
    """
    have = sum(v.numel() for v in tensors.values())
    fix = hint or "build the model with the backbone and dataset the checkpoint was trained with"
    try:
        backbone = cast(Backbone, registry.create_part("backbone", cfg.parts["backbone"]))
        with torch.device("meta"):
            net = backbone.build(data.num_classes)
    except RuntimeError as err:
        if "overflow" in str(err):  # even its size does not fit in 64 bits
            raise CheckpointError(
                f"checkpoint '{source}' holds {have:,} values, but its config describes a model too large to build", fix
            ) from None
        return  # only a pre-check: the real build reports what is wrong
    except Exception:
        return
    need = sum(v.numel() for v in net.state_dict().values())  # a file may hold the backbone alone
    if need > have:
        raise CheckpointError(
            f"checkpoint '{source}' holds {have:,} values, but the model its config describes needs {need:,}", fix
        )
