"""``energyat export``: a run's model as a timm or torchvision state dict, a TorchScript or an ONNX file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from energyat_core.export import DEFAULT_FILES, EXPORT_DIR, FORMATS, export_run


def add_commands(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run_dir: Path = typer.Argument(..., help="Run directory written by `energyat train`."),
    fmt: str = typer.Option(
        ...,
        "--format",
        help=f"{', '.join(FORMATS)}: a state dict for timm.create_model or torchvision's model (where the backbone is "
        "one), or the whole model with its normalisation (torchscript, onnx).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help=f"File to write (default: RUN_DIR/{EXPORT_DIR}/ "
        + ", ".join(DEFAULT_FILES.values())
        + "); its sidecar FILE.json (input, normalisation, the Python lines that load it) goes next to it.",
    ),
    checkpoint: str = typer.Option("model", "--checkpoint", help="model (last epoch) or best (best PGD epoch)."),
    data_dir: str = typer.Option(None, "--data-dir", help="Where the run's dataset is read from (for its image size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the file and its sidecar if they exist."),
) -> None:
    """Export a run's model for timm, torchvision, TorchScript or ONNX; the file is checked against the run."""
    console = Console()
    result = export_run(run_dir, fmt, out, checkpoint=checkpoint, data_dir=data_dir, overwrite=overwrite)
    normalization = "included" if result.normalization_included else "applied by the loading code (mean/std)"
    if result.max_abs_diff is not None:
        check = f"largest logit difference {result.max_abs_diff:.2g} on random images"
    else:
        check = f"not run: {result.unchecked}"
    console.print(f"wrote {escape(str(result.path))} ({result.format}) and {escape(str(result.sidecar))}")
    console.print(f"normalisation: {normalization}; check: {escape(check)}")
    console.print("load it with (x: float32 images in [0, 1]):")
    for line in result.load:
        console.print(f"    {escape(line)}", highlight=False, soft_wrap=True)
