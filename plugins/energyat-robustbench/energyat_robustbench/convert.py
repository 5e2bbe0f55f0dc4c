"""``energyat robustbench-import``: a RobustBench checkpoint as an energyat weights file.

``energyat eval --weights`` reads safetensors files in energyat's layout: the backbone under
``net.`` and the input normalisation in the ``mean`` and ``std`` buffers. This command reads a
RobustBench checkpoint (``torch.load(weights_only=True)``), loads it strictly into the model its
name gives (built by robustbench's own code, as the zoo builds it), and writes that layout with
mean 0 and std 1: the model takes [0, 1] images as in RobustBench, and the file says so, so that
``energyat eval --weights FILE --backbone robustbench:NAME --dataset cifar10`` needs no other flag.
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from torch import nn

from energyat_core.api import ConfigError, atomic_save
from energyat_robustbench.build import build_model
from energyat_robustbench.weights import load_checkpoint, warn


def add_commands(app: typer.Typer) -> None:
    """Add ``energyat robustbench-import`` to the CLI."""
    app.command("robustbench-import")(robustbench_import)


def energyat_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights in energyat's layout: ``net.*`` plus the identity normalisation (mean 0, std 1)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[0].in_channels if convs else 3
    state = {f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    state["mean"] = torch.zeros(1, channels, 1, 1)
    state["std"] = torch.ones(1, channels, 1, 1)
    return state


def robustbench_import(
    checkpoint: Path = typer.Argument(..., help="A RobustBench checkpoint (.pt/.pth, or .safetensors), local."),
    model: str = typer.Option(
        ...,
        "--model",
        help="Its zoo name (CIFAR-10 L-inf, e.g. Carmon2019Unlabeled; DATASET/THREAT/NAME for another table) or "
        "architecture call, e.g. 'WideResNet(depth=34, widen_factor=10)'.",
    ),
    out: Path = typer.Option(None, "--out", help="The energyat weights file (default: CHECKPOINT.safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Turn a RobustBench checkpoint into an energyat weights file for `energyat eval --weights`."""
    path = out or checkpoint.with_suffix(".safetensors")
    if path.resolve() == checkpoint.resolve():
        raise ConfigError(f"--out '{path}' is the checkpoint itself", "write the energyat file elsewhere")
    if path.exists() and not overwrite:
        raise ConfigError(f"'{path}' already exists", "pass --overwrite to replace it, or choose another --out")
    net = build_model(model)
    warn(load_checkpoint(net, checkpoint))
    atomic_save(energyat_state(net), path, {"format": "pt", "backbone": f"robustbench:{model}"})
    parts = model.split("/")
    dataset = parts[0] if len(parts) == 3 else "cifar10"
    console = Console()
    console.print(
        f"wrote {escape(str(path))}: RobustBench model '{escape(model)}' in energyat's layout (mean 0, std 1)"
    )
    console.print(
        f'evaluate it with: energyat eval --weights {escape(str(path))} --backbone "robustbench:{escape(model)}" '
        f"--dataset {escape(dataset)}",
        soft_wrap=True,
    )
