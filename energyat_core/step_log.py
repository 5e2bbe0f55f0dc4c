"""Live logs: per-step and per-epoch scalars in TensorBoard and CSV (``--log tensorboard,csv``).

Every ``--log-every`` optimisation steps the trainer measures, on rank 0 and in one host
sync (:func:`step_values`): the step's loss, learning rate, throughput, the batch means of
``E(x)`` and ``E(x_adv)`` from the logits the step already computed (a value the loss did
not compute is left out) and the total L2 norm of the gradients the optimiser applies.
After each epoch its metrics record goes to the same sinks. The sinks:

- ``tensorboard``: ``RUN/tensorboard/`` through ``torch.utils.tensorboard.SummaryWriter``
  (tags ``step/...`` and ``epoch/...``; needs the ``tensorboard`` package, checked when
  the run starts);
- ``csv``: ``RUN/steps.csv`` (one row per logged step, :data:`STEP_COLUMNS`) and
  ``RUN/epochs.csv`` (one row per epoch, the columns of the first record).

``metrics.jsonl`` stays the source of truth. The logs are append-only: a resume first drops
what was logged after the resume point (CSV rows of later steps or epochs and a torn last
line, rewritten atomically; TensorBoard's ``purge_step``) and then appends.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from energyat_core.components import Batch
from energyat_core.energy import marginal_energy
from energyat_core.errors import ConfigError
from energyat_core.run_dir import write_text_atomic

TENSORBOARD_DIR = "tensorboard"
STEPS_FILE = "steps.csv"
EPOCHS_FILE = "epochs.csv"
#: the columns of ``steps.csv``
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "img_per_s", "energy_clean", "energy_adv", "grad_norm")


def check_sinks(sinks: tuple[str, ...]) -> None:
    """Fail at the start of a run, in one line, when a sink's package is missing."""
    if "tensorboard" in sinks:
        try:
            import torch.utils.tensorboard  # noqa: F401 - needs the tensorboard package
        except ImportError:
            raise ConfigError(
                "--log tensorboard needs the tensorboard package, which is not installed",
                "pip install tensorboard (or pip install 'energyat-core[tensorboard]'), or drop --log tensorboard",
            ) from None


def step_values(loss: torch.Tensor, batch: Batch, params: Sequence[torch.Tensor], lr: float) -> dict[str, float]:
    """The measured scalars of one step, in one host sync: call it after the gradients are
    final (averaged over ranks, unscaled) and before the optimiser step."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
    names, tensors = ["loss", "grad_norm"], [loss.detach().float(), norm.float()]
    clean = batch._logits.get("clean")
    adv = batch._logits.get("adv", clean if batch.x_adv is batch.x else None)
    for name, logits in (("energy_clean", clean), ("energy_adv", adv)):
        if logits is not None:
            names.append(name)
            tensors.append(marginal_energy(logits.detach()).mean())
    values = dict(zip(names, torch.stack(tensors).tolist(), strict=True))
    return {**values, "lr": lr}


class CsvLog:
    """An append-only CSV file keyed by an increasing integer column (``step`` or ``epoch``)."""

    def __init__(self, path: Path, key: str, columns: tuple[str, ...] | None = None) -> None:
        self.path = path
        self.key = key
        self.columns = columns  # None: the header on disk, or the keys of the first row

    def truncate(self, upto: int) -> None:
        """Keep the rows with ``key <= upto``; drop a torn last line (rewrites atomically, only if needed)."""
        if not self.path.is_file():
            return
        text = self.path.read_text()
        lines = text.split("\n")
        complete, torn = lines[:-1], lines[-1]  # after the last newline: a line a kill cut short
        if not complete:
            if text:
                write_text_atomic(self.path, "")
            return
        header, rows = complete[0], complete[1:]
        names = next(csv.reader([header]))
        if self.columns is None:
            self.columns = tuple(names)
        at = names.index(self.key) if self.key in names else 0
        keep = [line for line in rows if _key(line, at) <= upto]
        if torn or len(keep) != len(rows):
            write_text_atomic(self.path, "\n".join([header, *keep]) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Add one row (and the header first when the file is new or empty), in one write."""
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if self.columns is None:
            self.columns = tuple(k for k, v in row.items() if isinstance(v, (int, float)))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if new:
            writer.writerow(self.columns)
        writer.writerow(["" if row.get(c) is None else row[c] for c in self.columns])
        with open(self.path, "a") as f:
            f.write(out.getvalue())


def _key(line: str, at: int) -> float:
    """The key cell of a CSV line as a number (unreadable: infinity, so that the row is dropped)."""
    try:
        return int(next(csv.reader([line]))[at])
    except (IndexError, ValueError, StopIteration):
        return float("inf")


class StepLog:
    """The run's live logs (does nothing when there are no sinks or on ranks other than 0)."""

    def __init__(self, sinks: tuple[str, ...], every: int, *, enabled: bool) -> None:
        check_sinks(sinks)
        self.sinks = tuple(sinks) if enabled else ()
        self.every = every
        self.run_dir: Path | None = None
        self.writer: Any = None
        self.steps: CsvLog | None = None
        self.epochs: CsvLog | None = None
        self.images = 0
        self.clock = time.perf_counter()

    def open(self, run_dir: Path, step: int, epoch: int) -> None:
        """Start logging into ``run_dir`` at the resume point (``step``, ``epoch``): drop later entries."""
        self.run_dir = Path(run_dir)
        if "csv" in self.sinks:
            self.steps = CsvLog(self.run_dir / STEPS_FILE, "step", STEP_COLUMNS)
            self.epochs = CsvLog(self.run_dir / EPOCHS_FILE, "epoch")
            self.steps.truncate(step)
            self.epochs.truncate(epoch)
        if "tensorboard" in self.sinks:
            self._open_writer(purge_step=step + 1 if (self.run_dir / TENSORBOARD_DIR).exists() else None)

    def _open_writer(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        assert self.run_dir is not None
        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def moved(self, run_dir: Path) -> None:
        """The run directory was renamed (a staged run swapped in): write there from now on."""
        self.run_dir = Path(run_dir)
        for log in (self.steps, self.epochs):
            if log is not None:
                log.path = self.run_dir / log.path.name
        if self.writer is not None:
            self.writer.close()
            self._open_writer(purge_step=None)

    def due(self, step: int) -> bool:
        """Whether optimisation step number ``step`` (counted from 1) is measured and logged."""
        return bool(self.sinks) and step % self.every == 0

    def restart_clock(self) -> None:
        """Throughput counts from here (the start of an epoch's training)."""
        self.images, self.clock = 0, time.perf_counter()

    def tick(self, images: int) -> None:
        """Count the images of a step (all ranks' when distributed)."""
        self.images += images

    def log_step(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Write one measured step (see :func:`step_values`); throughput since the last one."""
        now = time.perf_counter()
        row: dict[str, Any] = {"step": step, "epoch": epoch, **values}
        row["img_per_s"] = self.images / max(now - self.clock, 1e-9)
        self.images, self.clock = 0, now
        if self.steps is not None:
            self.steps.append(row)
        if self.writer is not None:
            for key in STEP_COLUMNS[2:]:
                if row.get(key) is not None:
                    self.writer.add_scalar(f"step/{key}", row[key], step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Write one epoch's metrics record (its numeric values)."""
        if self.epochs is not None:
            self.epochs.append(record)
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, record["step"])
            self.writer.flush()

    @contextlib.contextmanager
    def closing(self) -> Iterator[StepLog]:
        """``with log.closing(): ...`` closes the sinks however the block ends."""
        try:
            yield self
        finally:
            self.close()

    def close(self) -> None:
        """Flush and close the sinks."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
