"""What a training run prints: one line per epoch, and a summary table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from energyat_core.progress import table
from energyat_core.run_config import RunConfig
from energyat_core.training_state import Counters


def epoch_line(record: dict[str, Any], eval_steps: int) -> str:
    """One epoch's record in one line: loss, accuracies, energies and throughput."""
    return (
        f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  clean {record['clean_acc']:.1%}  "
        f"PGD-{eval_steps} {record['robust_acc']:.1%}  E(x) {record['energy_clean']:.2f}  "
        f"E(x_adv) {record['energy_adv']:.2f}  {record['img_per_s']:,.0f} img/s"
    )


def robust_text(records: list[dict[str, Any]]) -> str:
    """The robust accuracy of the last of ``records`` as the progress bar shows it (``-``: none yet)."""
    value = records[-1].get("robust_acc") if records else None
    return "-" if value is None else f"{value:.1%}"


def summary(last: dict[str, Any], cfg: RunConfig, counters: Counters, run_dir: Path) -> Table:
    """The table printed after training: the last epoch's figures and the run's totals."""
    rows = [
        ("epochs", f"{counters.epoch}/{cfg.epochs}"),
        ("clean accuracy", f"{last['clean_acc']:.2%}"),
        (f"PGD-{cfg.eval_steps} accuracy", f"{last['robust_acc']:.2%}"),
        ("best PGD accuracy", f"{counters.best_robust:.2%}"),
        ("mean E(x) / E(x_adv)", f"{last['energy_clean']:.3f} / {last['energy_adv']:.3f}"),
        ("throughput", f"{last['img_per_s']:,.0f} img/s"),
        ("passes per sample (fwd/bwd)", f"{last['fwd_per_sample']:.1f} / {last['bwd_per_sample']:.1f}"),
        ("training time", f"{counters.elapsed:.1f} s"),
        ("run directory", str(run_dir)),
    ]
    return table("run summary", ["", "value"], rows)
