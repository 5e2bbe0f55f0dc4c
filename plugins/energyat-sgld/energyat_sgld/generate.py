"""``energyat generate``: draw class-conditional samples from a trained run with a sampler.

Writes into ``--out``:

* ``grid.png``: one row per class, ``--per-row`` samples each;
* ``samples.npz``: ``images`` (uint8, N x H x W x C) and ``labels`` (int64), e.g. for FID/IS
  tools or as proxy training data;
* ``summary.json``: the settings, timing, the accuracy of the run's own classifier (and of a
  ``--judge`` run) on the samples, per class and overall, the samples' mean energies, and
  FID / IS when ``--metrics`` asks for them.

Accuracies and energies are measured on the saved (uint8-quantised) images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console

from energyat_core.api import (
    ConfigError,
    RunContext,
    as_dict,
    joint_energy,
    load_run,
    marginal_energy,
    parse_sets,
    resolve_device,
    table,
    task_progress,
)
from energyat_sgld import metrics as metrics_mod

GRID_FILE = "grid.png"
SAMPLES_FILE = "samples.npz"
SUMMARY_FILE = "summary.json"


def add_commands(app: typer.Typer) -> None:
    """Add ``energyat generate`` to the CLI."""
    app.command("generate")(generate)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``0, 1, ..., C-1, 0, 1, ...``: every class gets ``n // C`` or ``n // C + 1`` samples."""
    return torch.arange(n, dtype=torch.int64) % num_classes


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0,1] -> uint8 levels (rounded), on the CPU."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def save_npz(path: Path, images_nchw: torch.Tensor, labels: torch.Tensor) -> None:
    """``images`` as uint8 NHWC and ``labels`` as int64, uncompressed."""
    np.savez(
        path,
        images=images_nchw.permute(0, 2, 3, 1).contiguous().numpy().astype(np.uint8),
        labels=labels.cpu().numpy().astype(np.int64),
    )


def save_grid(path: Path, images_nchw: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int) -> None:
    """A PNG with one row per class: the first ``per_row`` samples of each class (blank where missing)."""
    from torchvision.utils import make_grid

    c, h, w = images_nchw.shape[1:]
    cells = torch.full((num_classes * per_row, c, h, w), 255, dtype=torch.uint8)
    for k in range(num_classes):
        mine = images_nchw[labels == k][:per_row]
        cells[k * per_row : k * per_row + len(mine)] = mine
    grid = make_grid(cells.float() / 255, nrow=per_row, padding=2, pad_value=1.0)
    from PIL import Image

    array = (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    Image.fromarray(array).save(path)


@torch.no_grad()
def _score(model: torch.nn.Module, images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return model(images_u8.to(device).float() / 255).float()


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    correct = (pred == labels).double()
    per_class = []
    for k in range(num_classes):
        mask = labels == k
        per_class.append(float(correct[mask].mean()) if mask.any() else None)
    return {"overall": float(correct.mean()) if len(correct) else 0.0, "per_class": per_class}


def generate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `energyat train`."),
    n: int = typer.Option(10000, "--n", help="Number of samples; labels are balanced over the classes."),
    init: str = typer.Option(None, "--init", help="Start of the chains: noise, gaussian or pca (default: pca)."),
    steps: int = typer.Option(None, "--steps", help="SGLD steps K (default: 20)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default: RUN_DIR/samples)."),
    sampler_name: str = typer.Option("sgld", "--sampler", help="Sampler component (`energyat describe sampler`)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Sampler option sampler.NAME=VALUE, e.g. --set sampler.momentum=0.9 (repeatable)."
    ),
    batch_size: int = typer.Option(250, "--batch-size", help="Chains run in parallel."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisations and the Langevin noise."),
    checkpoint: str = typer.Option("model", "--checkpoint", help="model (last epoch) or best (best PGD epoch)."),
    judge: Path = typer.Option(
        None, "--judge", help="Another run whose classifier also scores the samples (network-free quality check)."
    ),
    metrics: str = typer.Option(
        None, "--metrics", help="Comma-separated fid,is: FID against the training set and Inception Score."
    ),
    inception_weights: Path = typer.Option(
        None,
        "--inception-weights",
        help="Local InceptionV3 weights (torch-fidelity's .pth or a .safetensors copy; weights only), for offline use.",
    ),
    real_n: int = typer.Option(0, "--real-n", help="FID: training images in the reference set (0 = all)."),
    per_row: int = typer.Option(10, "--per-row", help="Samples per class row of grid.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Draw samples from a trained classifier's energy: grid.png, samples.npz and summary.json."""
    console = Console()
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}", "pass the number of samples to draw, e.g. --n 1000")
    if batch_size < 1 or per_row < 1:
        raise ConfigError("--batch-size and --per-row must be at least 1", "pass positive values")
    names = metrics_mod.parse_metrics(metrics)
    dev = resolve_device(device)
    # fail before sampling if the metrics cannot be computed (library or weights missing)
    extractor = metrics_mod.inception_extractor(inception_weights, dev) if names else None

    run = load_run(run_dir, which=checkpoint, device=dev)
    model = run.model.eval()
    num_classes = run.data.num_classes
    if "fid" in names and real_n <= 0:
        run.data.require_in_memory("--real-n 0 (FID against every training image)", "pass --real-n N, e.g. 10000")
    judge_run = None
    if judge is not None:
        judge_run = load_run(judge, device=dev)
        if judge_run.data.num_classes != num_classes or judge_run.data.image_shape != run.data.image_shape:
            raise ConfigError(
                f"--judge run '{judge}' classifies {judge_run.data.num_classes} classes of "
                f"{judge_run.data.image_shape} images, the generating run {num_classes} of {run.data.image_shape}",
                "judge with a run trained on the same dataset",
            )
        judge_run.model.eval()

    options: dict[str, Any] = dict(parse_sets(set_ or [], kinds=("sampler",)).get("sampler", {}))
    if init is not None:
        options["init"] = init
    if steps is not None:
        options["steps"] = steps
    ctx = RunContext(device=dev, num_classes=num_classes, data=run.data, run_dir=Path(run_dir), seed=seed)
    sampler = ctx.create("sampler", sampler_name, **options)
    torch.manual_seed(seed)
    start = time.perf_counter()
    sampler.setup(ctx)
    fit_seconds = time.perf_counter() - start

    labels = balanced_labels(n, num_classes)
    images: list[torch.Tensor] = []
    logits_self: list[torch.Tensor] = []
    logits_judge: list[torch.Tensor] = []
    start = time.perf_counter()
    with task_progress(console, disable=quiet) as progress:
        task = progress.add_task(f"{sampler_name} samples", total=n)
        for s in range(0, n, batch_size):
            y = labels[s : s + batch_size].to(dev)
            x = sampler.sample(model, sampler.init(y), y)
            u8 = to_uint8(x)
            images.append(u8)
            logits_self.append(_score(model, u8, dev).cpu())
            if judge_run is not None:
                logits_judge.append(_score(judge_run.model, u8, dev).cpu())
            progress.update(task, advance=len(y))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start

    all_images = torch.cat(images)
    own = torch.cat(logits_self)
    out_dir = Path(out) if out is not None else Path(run_dir) / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_npz(out_dir / SAMPLES_FILE, all_images, labels)
    save_grid(out_dir / GRID_FILE, all_images, labels, num_classes, per_row)

    summary: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": run.source,
        "sampler": sampler_name,
        "options": as_dict(sampler.config),
        "n": n,
        "seed": seed,
        "device": str(dev),
        "batch_size": batch_size,
        "seconds": seconds,
        "init_fit_seconds": fit_seconds,
        "init_fit": getattr(sampler, "fit_report", {}),
        "images_per_second": n / max(seconds, 1e-9),
        "classes": list(run.data.classes),
        "accuracy": {"self": _accuracy(own.argmax(1), labels, num_classes)},
        "energy": {
            "marginal_mean": float(marginal_energy(own).mean()),
            "joint_mean": float(joint_energy(own, labels).mean()),
        },
        "files": {"grid": GRID_FILE, "samples": SAMPLES_FILE},
    }
    if judge_run is not None:
        judged = _accuracy(torch.cat(logits_judge).argmax(1), labels, num_classes)
        summary["accuracy"]["judge"] = {"run": str(judge), "checkpoint": judge_run.source, **judged}
    if names:
        assert extractor is not None
        real = None  # FID's reference set; the Inception Score needs none
        if "fid" in names and run.data.train_files is not None:  # streamed: decode the first real_n images
            files = run.data.train_files
            real = torch.stack([files[i] for i in range(min(real_n, len(files)))])
        elif "fid" in names:
            real = run.data.train_x if real_n <= 0 else run.data.train_x[:real_n]
        summary["metrics"] = metrics_mod.compute_metrics(all_images, real, names, extractor)
        if real is not None:
            summary["metrics"]["real_n"] = int(len(real))
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    if not quiet:
        rows = [
            ("samples", f"{n} ({n / max(seconds, 1e-9):,.1f} img/s)"),
            ("accuracy of the run's classifier", f"{summary['accuracy']['self']['overall']:.2%}"),
        ]
        if judge_run is not None:
            rows.append(("accuracy of the judge", f"{summary['accuracy']['judge']['overall']:.2%}"))
        rows.append(
            ("mean E(x) / E(x, y)", f"{summary['energy']['marginal_mean']:.3f} / {summary['energy']['joint_mean']:.3f}")
        )
        for key, value in summary.get("metrics", {}).items():
            rows.append((key, f"{value:.3f}" if isinstance(value, float) else str(value)))
        rows.append(("written to", str(out_dir)))
        console.print(
            table(f"energyat generate ({sampler_name}, init {summary['options'].get('init')})", ["", ""], rows)
        )
