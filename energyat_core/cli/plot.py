"""``energyat plot``: accuracy and energy dynamics of a run, and its per-sample energy histogram."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console

from energyat_core.cli.flags import at_least
from energyat_core.errors import EnergyATError, RunDirError
from energyat_core.evaluation import eps_text
from energyat_core.precision import resolve_device

ACCURACY_PNG = "accuracy.png"
ENERGY_PNG = "energy.png"
HISTOGRAM_PNG = "energy_histogram.png"


def add_commands(app: typer.Typer) -> None:
    app.command("plot")(plot)


def plot(
    run_dir: Path = typer.Argument(..., help="Run directory written by `energyat train`."),
    out: Path = typer.Option(None, "--out", help="Where the PNGs go (default: RUN_DIR/plots)."),
    n: int = typer.Option(
        500, "--n", help="Test images of the energy histogram (the first N; 0 = all).", callback=at_least(0, "--n", 500)
    ),
    steps: int = typer.Option(
        10, "--steps", help="PGD steps of the histogram's adversarial images.", callback=at_least(0, "--steps", 10)
    ),
    checkpoint: str = typer.Option("model", "--checkpoint", help="model (last epoch) or best (best PGD epoch)."),
    histogram: bool = typer.Option(
        True, "--histogram/--no-histogram", help="Also draw the histogram of per-sample energies (needs the model)."
    ),
    batch_size: int = typer.Option(
        256, "--batch-size", help="Batch size of the histogram's attack.", callback=at_least(1, "--batch-size", 256)
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attack's random start."),
) -> None:
    """Draw accuracy and E(x) / E(x_adv) per epoch from metrics.jsonl, and a histogram of per-sample energies."""
    from energyat_core import plotting
    from energyat_core.run_dir import METRICS_FILE

    plotting.require_matplotlib()  # fail early, with the install hint, before any work
    console = Console()
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise RunDirError(
            f"'{run_dir}' has no {METRICS_FILE}", "pass the --out directory of `energyat train` after one epoch"
        )
    records = plotting.last_per_epoch(plotting.load_metrics(metrics_path))
    if not records:
        raise RunDirError(f"'{metrics_path}' holds no epoch yet", "train at least one epoch, then plot")
    out_dir = Path(out) if out is not None else run_dir / "plots"
    name = run_dir.resolve().name
    written = [
        plotting.plot_accuracy(records, out_dir / ACCURACY_PNG, title=f"{name}: accuracy per epoch"),
        plotting.plot_energy(records, out_dir / ENERGY_PNG, title=f"{name}: mean energy per epoch"),
    ]
    if histogram:
        written.append(
            draw_histogram(
                run_dir,
                out_dir / HISTOGRAM_PNG,
                which=checkpoint,
                n=n,
                steps=steps,
                batch_size=batch_size,
                device=device,
                seed=seed,
            )
        )
    for path in written:
        console.print(str(path), highlight=False, soft_wrap=True)


def draw_histogram(
    run_dir: Path, path: Path, *, which: str, n: int, steps: int, batch_size: int, device: str, seed: int
) -> Path:
    """Per-sample E(x) of clean and PGD test images for the run's checkpoint."""
    from energyat_core import plotting
    from energyat_core.saved_run import load_run

    dev = resolve_device(device)
    run = load_run(run_dir, which=which, device=dev)
    count = len(run.data.test_y) if n <= 0 else min(n, len(run.data.test_y))
    if count == 0:
        raise EnergyATError("the run's test set is empty", "use a dataset with test images")
    x = (run.data.test_x[:count].float() / 255).to(dev)
    y = run.data.test_y[:count].to(dev)
    torch.manual_seed(seed)
    e_clean, e_adv = plotting.sample_energies(
        run.model, x, y, eps=run.cfg.threat.eps, norm=run.cfg.norm, steps=steps, batch_size=batch_size
    )
    threat = f"{'L-inf' if run.cfg.norm == 'linf' else 'L2'} {eps_text(run.cfg.threat.eps, run.cfg.norm)}"
    title = f"{run_dir.resolve().name}: E(x) of {count} test images, PGD-{steps} {threat}"
    return plotting.plot_energy_histogram(e_clean, e_adv, path, title=title)
