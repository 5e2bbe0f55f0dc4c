"""Reading a trained model back: a run directory, or a plain weights file.

Commands that work on a trained model (``eval``, ``generate``, ``plot``) start here::

    run = load_run("runs/pgd-at", device=torch.device("cpu"))
    run.model, run.cfg, run.data

Only the backbone and the dataset of the stored config are resolved, so a run can be
evaluated where the plugins it was trained with (its attack, loss, ...) are not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from energyat_core import checkpoint as ckpt
from energyat_core.build import build_data, build_model, create_backbone
from energyat_core.data import ImageData
from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.models.normalization import check_normalize, describe, format_normalize, recorded_normalization
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
    """A trained model with the config and data it was trained with; ``source`` is the weights file.

    ``warnings`` are the fix-ups made to fit the file to the model, one line each (printed as
    ``warning:`` lines on stderr when the model was loaded).
    """

    cfg: RunConfig
    model: torch.nn.Module
    data: ImageData
    source: str
    warnings: list[str] = field(default_factory=list)


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
    run = _loaded(cfg, registry, device, tensors, str(path), hint, from_metadata=True)
    ckpt.warn_lines(run.warnings)
    return run


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
    normalize: str | None = None,
) -> LoadedRun:
    """A plain state dict saved by anyone (safetensors), with the architecture named by the user.

    ``normalize`` (``dataset``, ``none`` or ``MEAN,STD``, see :mod:`energyat_core.models.normalization`)
    is the input normalisation put in front of the backbone. ``None``: what the file records
    (energyat's ``mean``/``std`` buffers, or its metadata ``normalization``), else the
    dataset's, which is then said in one warning line.
    """
    registry = registry or get_registry()
    source = str(weights)
    if normalize is not None:
        try:
            normalize = check_normalize(normalize)
        except ValueError as err:
            raise ConfigError(
                f"--{err}", "e.g. --normalize none, --normalize 0.5,0.25 or --normalize dataset"
            ) from None
    tensors, metadata = ckpt.read_safetensors(weights)
    tensors, fixups = ckpt.strip_prefixes(tensors, source)
    recorded = recorded_normalization(tensors, metadata, source)
    if recorded is not None:  # the buffers are replaced by the normalisation chosen here
        tensors = {k: v for k, v in tensors.items() if k not in ckpt.NORMALIZATION_KEYS}
    spec = normalize if normalize is not None else format_normalize(*recorded) if recorded else "dataset"
    document = {
        "backbone": {"name": backbone, **(backbone_options or {})},
        "dataset": dataset,
        "data_dir": data_dir,
        "normalize": spec,
    }
    cfg = RunConfig.from_dict(document, registry, kinds=MODEL_KINDS)
    run = _loaded(cfg, registry, device, tensors, source, fixups=fixups)
    if normalize is None and recorded is None:
        run.warnings.append(
            f"'{source}' records no input normalisation: the model uses the dataset's "
            f"({describe(run.data.mean, run.data.std)}); pass "
            "--normalize none if the model normalises its input itself, or --normalize MEAN,STD"
        )
    ckpt.warn_lines(run.warnings)
    return run


def _loaded(
    cfg: RunConfig,
    registry: Registry,
    device: torch.device | None,
    tensors: dict[str, torch.Tensor],
    source: str,
    hint: str = "",
    from_metadata: bool = False,
    fixups: list[str] | None = None,
) -> LoadedRun:
    """Build the model of ``cfg``, load ``tensors`` into it and put it in eval mode.

    ``from_metadata``: ``cfg`` comes from the file, not from the user; its size is checked first.
    The fix-ups made to fit the file (``fixups`` so far, then :func:`~energyat_core.checkpoint.load_weights`'s)
    are the run's ``warnings``, not printed here.
    """
    device = device or torch.device("cpu")
    data = build_data(registry, cfg)
    if from_metadata:
        _check_size(registry, cfg, data, tensors, source, hint)
    model = build_model(registry, cfg, data, device, loading_weights=source)
    lines = list(fixups or [])
    ckpt.load_weights(model, {k: v.to(device) for k, v in tensors.items()}, source, hint, fixups=lines)
    model.eval()
    return LoadedRun(cfg, model, data, source, lines)


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
        backbone = create_backbone(registry, cfg, data, torch.device("meta"), loading_weights=source)
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
