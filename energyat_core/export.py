"""``energyat export``: a run's model as a file that another library loads with its own API.

Formats (docs/export.md):

* ``timm``: the backbone's weights (safetensors) for ``timm.create_model(NAME, num_classes=K,
  pretrained=False)``; ``timm:NAME`` backbones only.
* ``torchvision``: the backbone's weights for ``torchvision.models.get_model(NAME, weights=None,
  num_classes=K)`` where the backbone is a torchvision architecture (core's ``resnet18`` with a
  CIFAR stem, timm ResNets that torchvision also has).
* ``torchscript``: the whole model, normalisation included, traced (``torch.jit.load``).
* ``onnx``: the whole model, normalisation included (``onnxruntime.InferenceSession``).

Each file gets a sidecar ``FILE.json`` next to it: the input it expects, the normalisation (the
mean and std to apply, for the two weights formats) and the exact Python lines that load it and
compute ``logits`` from images ``x`` in [0, 1]. Every export is checked before it is kept: the
file, loaded back with the target library, must give the run's logits on random images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from energyat_core import export_graph, export_weights
from energyat_core.components import Backbone
from energyat_core.errors import CheckpointError, ConfigError, EnergyATError, first_line
from energyat_core.models.normalization import METADATA_KEY as NORMALIZATION_METADATA
from energyat_core.registry import Registry, get_registry
from energyat_core.run_dir import write_text_atomic
from energyat_core.saved_run import LoadedRun, load_run

#: the formats, in the order ``energyat export --help`` lists them
FORMATS = ("timm", "torchvision", "torchscript", "onnx")
#: the file each format writes by default, in RUN_DIR/export/
DEFAULT_FILES = {
    "timm": "timm.safetensors",
    "torchvision": "torchvision.safetensors",
    "torchscript": "torchscript.pt",
    "onnx": "model.onnx",
}
EXPORT_DIR = "export"
#: random images of the check (a batch size other than the trace's: the exported batch size is free)
CHECK_IMAGES, TRACE_IMAGES = 3, 2
#: largest logit difference accepted, relative to max(1, largest |logit|)
TOLERANCE = 1e-4

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Exported:
    """What :func:`export_run` wrote: the file, its sidecar, and how well the file reproduces the run."""

    format: str
    path: Path
    sidecar: Path
    load: list[str]
    normalization_included: bool
    #: largest |logit difference| between the file (loaded by the target library) and the run, on random images
    max_abs_diff: float | None
    #: why the numeric check could not run ("" when it ran)
    unchecked: str = ""


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    checkpoint: str = "model",
    data_dir: str | None = None,
    overwrite: bool = False,
    registry: Registry | None = None,
) -> Exported:
    """Export the model of a run directory to ``fmt``; the file goes to ``out`` (default RUN_DIR/export/)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    registry = registry or get_registry()
    run = load_run(run_dir, which=checkpoint, device=torch.device("cpu"), registry=registry, data_dir=data_dir)
    path = Path(out) if out is not None else Path(run_dir) / EXPORT_DIR / DEFAULT_FILES[fmt]
    return export_model(run, fmt, path, Path(run_dir), overwrite=overwrite, registry=registry)


def formats_for(run: LoadedRun, registry: Registry | None = None) -> list[str]:
    """The formats that apply to the run's backbone."""
    backbone = _backbone(run, registry or get_registry())
    return [fmt for fmt in FORMATS if isinstance(_plan(fmt, backbone, run), export_weights.WeightsPlan | type(None))]


def export_model(
    run: LoadedRun, fmt: str, path: Path, run_dir: Path, *, overwrite: bool = False, registry: Registry | None = None
) -> Exported:
    """Write ``run.model`` as ``fmt`` to ``path`` and its sidecar, then check the file against the model."""
    registry = registry or get_registry()
    backbone = _backbone(run, registry)
    plan = _plan(fmt, backbone, run)
    if isinstance(plan, str):
        others = ", ".join(f for f in formats_for(run, registry) if f != fmt)
        raise ConfigError(
            f"format '{fmt}' does not apply to backbone '{run.cfg.spec('backbone')}' ({plan})",
            f"export this run to one of: {others}",
        )
    sidecar = _paths(path, run_dir, overwrite)
    model = cast(nn.Module, run.model).float().eval()
    shape = tuple(run.data.test_x.shape[1:])
    mean, std = _normalization(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(TRACE_IMAGES, *shape, generator=generator)
    x = torch.rand(CHECK_IMAGES, *shape, generator=generator)
    with torch.no_grad():
        want = model(x)  # eagerly, before any tracing: a backbone may check its first input once
    path.parent.mkdir(parents=True, exist_ok=True)

    with torch.no_grad():
        lines, reload = _write(fmt, plan, model, example, path, mean, std)
        diff, unchecked = _check(want, reload, x, path)
    result = Exported(fmt, path, sidecar, lines, plan is None, diff, unchecked)
    write_text_atomic(sidecar, json.dumps(_sidecar(result, run, shape, mean, std), indent=2) + "\n")
    return result


# -- pieces -------------------------------------------------------------------------------
def _write(
    fmt: str,
    plan: export_weights.WeightsPlan | None,
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    mean: list[float],
    std: list[float],
) -> tuple[list[str], Callable[[], Logits | None]]:
    """Write the file; its loading code's lines, and how to load it back with the target library."""
    if plan is None and fmt == "torchscript":
        return export_graph.write_torchscript(model, example, path), partial(export_graph.read_torchscript, path)
    if plan is None:
        return export_graph.write_onnx(model, example, path), partial(export_graph.read_onnx, path)
    # the normalisation also in the metadata entry that energyat reads back (eval --weights FILE)
    record = {NORMALIZATION_METADATA: json.dumps({"mean": mean, "std": std})}
    lines = export_weights.write_weights(plan, cast(nn.Module, model.net), path, record)
    lines += [
        f"mean = torch.tensor({mean!r}).view(1, -1, 1, 1)",
        f"std = torch.tensor({std!r}).view(1, -1, 1, 1)",
        "logits = model((x - mean) / std)",
    ]
    return lines, partial(_read_normalised, plan, path, mean, std)


def _read_normalised(plan: export_weights.WeightsPlan, path: Path, mean: list[float], std: list[float]) -> Logits:
    """The backbone read back by the target library, behind the normalisation as the sidecar's lines apply it."""
    net = export_weights.read_weights(plan, path)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return lambda x: net((x - m) / s)


def _backbone(run: LoadedRun, registry: Registry) -> Backbone:
    return cast(Backbone, registry.create_part("backbone", run.cfg.parts["backbone"]))


def _plan(fmt: str, backbone: Backbone, run: LoadedRun) -> export_weights.WeightsPlan | str | None:
    """A weights format's plan, or why the format does not apply; ``None`` for the graph formats (always apply)."""
    if fmt not in ("timm", "torchvision"):
        return None
    make = export_weights.timm_plan if fmt == "timm" else export_weights.torchvision_plan
    try:
        return make(backbone, cast(nn.Module, run.model.net), run.data.num_classes)
    except EnergyATError as err:
        return err.problem


def _normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    """The mean and std the model applies to its [0, 1] inputs, per channel."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        raise CheckpointError(
            "the run's model carries no input normalisation (mean and std)", "export a run energyat wrote"
        )
    return [float(v) for v in mean.flatten()], [float(v) for v in std.flatten()]


def _paths(path: Path, run_dir: Path, overwrite: bool) -> Path:
    """The sidecar of ``path``, after refusing names that would replace a run's own files or another file."""
    if path.suffix == ".json":
        raise ConfigError(f"--out '{path}' ends in .json, the name of the sidecar", "give the file another suffix")
    sidecar = path.with_suffix(".json")
    own = {p.resolve() for p in run_dir.iterdir() if p.is_file()} if run_dir.is_dir() else set()
    for target in (path, sidecar):
        if target.resolve() in own:
            raise ConfigError(
                f"exporting to '{path}' would replace the run's own file '{target.name}'",
                f"write elsewhere (default: {run_dir / EXPORT_DIR})",
            )
        if target.is_dir():
            raise ConfigError(f"'{target}' is a directory", "give --out the path of a file")
        if target.exists() and not overwrite:
            raise ConfigError(f"'{target}' already exists", "pass --overwrite to replace it, or choose another --out")
    return sidecar


def _check(
    want: torch.Tensor, reload: Callable[[], Logits | None], x: torch.Tensor, path: Path
) -> tuple[float | None, str]:
    """Largest |logit difference| between the written file (loaded back) on ``x`` and the run's logits ``want``.

    A file that cannot be loaded back, or that gives other logits, is removed.
    """
    try:
        loaded = reload()
        got = None if loaded is None else torch.as_tensor(loaded(x))
    except Exception as err:  # the target library's loaders raise their own kinds
        path.unlink(missing_ok=True)
        if isinstance(err, EnergyATError):
            raise
        raise CheckpointError(
            f"the exported file does not load back ({type(err).__name__}: {first_line(err)[:200]})",
            "the file was removed; export to another format, and report this",
        ) from None
    if got is None:
        return None, "onnxruntime is not installed: the file was only checked by onnx.checker"
    scale = max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= TOLERANCE * scale:
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"the exported file gives other logits than the run (largest difference {diff:.3g} on random images)",
            "the file was removed; export to another format, and report this",
        )
    return diff, ""


def _sidecar(result: Exported, run: LoadedRun, shape: tuple[int, ...], mean: list[float], std: list[float]) -> dict:
    """The JSON written next to the exported file."""
    doc: dict[str, Any] = {
        "format": result.format,
        "file": result.path.name,
        "backbone": run.cfg.spec("backbone"),
        "dataset": run.cfg.spec("dataset"),
        "num_classes": run.data.num_classes,
        "classes": list(run.data.classes),
        "input": {"name": "x", "shape": ["N", *shape], "dtype": "float32", "range": [0, 1]},
        "normalization": {
            "included": result.normalization_included,
            "mean": mean,
            "std": std,
            "applied_as": "(x - mean) / std, per channel"
            + ("; inside the exported model" if result.normalization_included else "; by the last line of `load`"),
        },
        "load": result.load,
        "load_note": "Python, run from this file's folder, with x a float32 torch tensor of images in [0, 1]",
    }
    doc["check"] = (
        {"images": CHECK_IMAGES, "max_abs_logit_diff": result.max_abs_diff}
        if result.max_abs_diff is not None
        else {"skipped": result.unchecked}
    )
    return doc
