"""Building what a :class:`~energyat_core.run_config.RunConfig` names: data, model, optimiser, components.

Every function here builds one thing from the config, so that the trainer (and the
commands that read a run back, see :mod:`energyat_core.saved_run`) build them the same way.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from rich.console import Console

from energyat_core.components import Backbone, Component, Dataset, RunContext
from energyat_core.data import DeviceLoader, ImageData, StreamingLoader, make_loader
from energyat_core.distributed import DistInfo
from energyat_core.errors import ConfigError
from energyat_core.kinds import STEP_KINDS
from energyat_core.models import Classifier, build_classifier
from energyat_core.models.normalization import resolve_normalize
from energyat_core.registry import Registry
from energyat_core.run_config import RunConfig


def build_data(registry: Registry, cfg: RunConfig) -> ImageData:
    """Load and validate the run's dataset (train subset if ``max_train``)."""
    dataset = cast(Dataset, registry.create_part("dataset", cfg.parts["dataset"]))
    data = dataset.load(cfg.data_dir)
    data.validate()
    if cfg.max_train is not None:
        data = data.subset_train(cfg.max_train)
    return data


def build_model(
    registry: Registry, cfg: RunConfig, data: ImageData, device: torch.device, *, loading_weights: str | None = None
) -> torch.nn.Module:
    """The run's backbone behind the run's input normalisation (``cfg.normalize`` for ``data``; under the
    default ``dataset``, a backbone's own :attr:`~energyat_core.components.Backbone.input_normalization`
    wins), on ``device``.

    The backbone is set up with the run's context first (a timm backbone reads the image
    size from it to adapt its stem); ``loading_weights`` names a weights file that is loaded
    into the model right after, so that the backbone skips its own pretrained initialisation.
    """
    backbone = create_backbone(registry, cfg, data, device, loading_weights=loading_weights)
    spec = cfg.normalize
    if spec == "dataset" and backbone.input_normalization is not None:  # a backbone that normalises itself
        spec = backbone.input_normalization
    mean, std = resolve_normalize(spec, data.mean, data.std)
    model = build_classifier(backbone, data.num_classes, mean, std).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def create_backbone(
    registry: Registry, cfg: RunConfig, data: ImageData, device: torch.device, *, loading_weights: str | None = None
) -> Backbone:
    """The run's backbone component, set up with the run's context (not built yet)."""
    backbone = cast(Backbone, registry.create_part("backbone", cfg.parts["backbone"]))
    extras: dict[str, Any] = {"loading_weights": loading_weights} if loading_weights else {}
    ctx = RunContext(
        device=device,
        num_classes=data.num_classes,
        data=data,
        seed=cfg.seed,
        registry=registry,
        threat=cfg.threat,
        extras=extras,
    )
    backbone.setup(ctx)
    return backbone


def build_components(registry: Registry, cfg: RunConfig, ctx: RunContext) -> dict[str, Component]:
    """The components of the training step (attack, loss, weighter, source if any), by kind, set up.

    All are created first, then set up in the same order (so that a run draws its random
    numbers in the same order as every run before it).
    """
    components = {
        kind.name: registry.create_part(kind.name, cfg.parts[kind.name])
        for kind in STEP_KINDS
        if kind.name in cfg.parts
    }
    for component in components.values():
        component.setup(ctx)
    return components


def make_optimizer(cfg: RunConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser of the trainable parameters (fused on CUDA: one kernel for the whole update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, **fast
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def check_batch_split(cfg: RunConfig, dist: DistInfo) -> None:
    """The global batch must split evenly over the ranks."""
    if cfg.batch_size % dist.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} does not split over {dist.world_size} processes",
            f"use a multiple of {dist.world_size} (the batch size is global: each rank takes an equal share)",
        )


def training_loader(
    cfg: RunConfig, data: ImageData, device: torch.device, dist: DistInfo
) -> DeviceLoader | StreamingLoader:
    """This rank's share of the training batches (a DeviceLoader, or a StreamingLoader for data on disk)."""
    return make_loader(
        data,
        cfg.batch_size // dist.world_size,
        device,
        shuffle=True,
        augment=data.augment if cfg.augment is None else cfg.augment,
        drop_last=len(data.train_y) > cfg.batch_size,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=cfg.channels_last and device.type == "cuda",
    )


def eval_subset(
    cfg: RunConfig, data: ImageData, device: torch.device, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the ``eval_n`` held-out images of the per-epoch evaluation, in [0, 1]."""
    n_eval = min(cfg.eval_n, len(data.test_y))
    shard = slice(dist.rank, n_eval, dist.world_size)
    x = (data.test_x[:n_eval][shard].float() / 255).to(device)
    return x, data.test_y[:n_eval][shard].to(device)


def compile_model(model: torch.nn.Module, console: Console) -> None:
    """torch.compile the forward pass; fall back to eager, with one warning, if compiling fails."""
    classifier = cast(Classifier, model)
    try:
        compiled = torch.compile(classifier.forward_eager)  # type: ignore[arg-type, operator]
    except Exception as err:  # compilation is an optimisation, never a reason to stop
        console.print(f"[yellow]warning:[/] torch.compile is unavailable here ({err}); running eagerly")
        return

    def forward(x):
        try:
            return compiled(x)
        except Exception as err:  # compilation happens lazily, at the first call of each graph
            reason = str(err).splitlines()[0][:200]
            console.print(f"[yellow]warning:[/] torch.compile failed ({reason}); running eagerly")
            classifier.set_compiled(None)
            return classifier.forward_eager(x)

    classifier.set_compiled(forward)
