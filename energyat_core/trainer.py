"""The training loop: one step is attack -> per-sample loss -> weights -> weighted mean -> update.

:class:`Trainer` builds everything a :class:`~energyat_core.run_config.RunConfig` names
(:mod:`energyat_core.build`), trains epoch by epoch, evaluates on a held-out subset after
each epoch (:mod:`energyat_core.epoch_eval`), logs ``metrics.jsonl`` (:mod:`energyat_core.run_dir`),
the run record (:mod:`energyat_core.run_record`) and the live logs (:mod:`energyat_core.step_log`),
and checkpoints (:mod:`energyat_core.training_state`), so that :meth:`Trainer.resume` continues a killed
run exactly where its last completed epoch left it. A run that replaces another
(``--overwrite``) writes into a :class:`~energyat_core.run_dir.Staging` directory, swapped
in for the old run once its first checkpoint is written.

(Slightly over 300 lines: the step, the loop and the per-epoch bookkeeping read best together;
building, checkpointing, logging and evaluation live in their own modules.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console

from energyat_core import distributed
from energyat_core.build import (
    build_components,
    build_data,
    build_model,
    check_batch_split,
    compile_model,
    eval_subset,
    make_optimizer,
    training_loader,
)
from energyat_core.components import Attack, Batch, DataSource, Loss, RunContext, Weighter
from energyat_core.early_stop import CHECK_STEPS, check_accuracy, collapsed
from energyat_core.epoch_eval import held_out_eval
from energyat_core.epoch_stats import EpochStats, PassCounter
from energyat_core.errors import NonFiniteError
from energyat_core.modes import model_mode
from energyat_core.precision import autocast, resolve_device, resolve_precision
from energyat_core.progress import training_progress
from energyat_core.registry import Registry
from energyat_core.run_config import RunConfig
from energyat_core.run_dir import STATE_FILE, Staging, read_metrics, truncate_metrics, write_config
from energyat_core.run_record import record_invocation
from energyat_core.schedules import apply_schedule, inert_cycle_note
from energyat_core.step_log import StepLog, step_values
from energyat_core.summary import epoch_line, robust_text, summary
from energyat_core.training_state import Counters, Trainable, load_checkpoint, rng_state, save_checkpoint, set_rng_state

#: seed offset per rank: the same initial weights everywhere, different attack noise on each rank
RANK_SEED_STRIDE = 7919


class Trainer:
    """Trains one run described by a :class:`RunConfig` into ``run_dir``."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        registry: Registry,
        console: Console | None = None,
        *,
        quiet: bool = False,
        staging: Staging | None = None,
    ) -> None:
        self.cfg = cfg
        #: where the run writes: ``run_dir``, or the staging directory until the first checkpoint
        self.run_dir = staging.path if staging is not None else Path(run_dir)
        self.staging = staging
        self.console = console or Console()
        self.dist = distributed.from_environment()
        self.quiet = quiet or not self.dist.is_main  # only rank 0 talks and writes
        self.step_log = StepLog(cfg.log, cfg.log_every, enabled=self.dist.is_main)  # checks the sinks first
        self.plugins = registry.plugins  # for the run record
        self.resumed = False  # whether the run continues an earlier invocation (its record is extended)
        self.device = distributed.setup(self.dist, resolve_device(cfg.device))
        self.precision = resolve_precision(cfg.precision, self.device)
        check_batch_split(cfg, self.dist)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.data = build_data(registry, cfg)
        self.model = build_model(registry, cfg, self.data, self.device)
        distributed.broadcast_parameters(self.model, self.dist)
        self.passes = PassCounter()
        self.passes.attach(self.model)
        if cfg.compile:
            compile_model(self.model, self.console)
        self.ctx = RunContext(
            device=self.device,
            num_classes=self.data.num_classes,
            data=self.data,
            run_dir=self.run_dir,
            precision=self.precision,
            seed=cfg.seed,
            dist=self.dist,
            registry=registry,
            threat=cfg.threat,
        )
        self.components = build_components(registry, cfg, self.ctx)
        if self.dist.enabled:
            torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * self.dist.rank)

        self.optimizer = make_optimizer(cfg, self.model, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.loader = training_loader(cfg, self.data, self.device, self.dist)
        self.eval_x, self.eval_y = eval_subset(cfg, self.data, self.device, self.dist)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.total_steps = cfg.epochs * len(self.loader)
        if (note := inert_cycle_note(cfg)) and not self.quiet:
            self.console.print(f"[yellow]note:[/] {note}")
        self.counters = Counters()
        #: the current epoch's first training batch (``--early-stop`` checks it) and whether it stopped the run
        self.first_batch: tuple[torch.Tensor, torch.Tensor] = (self.eval_x[:0], self.eval_y[:0])
        self.stopped_early = False

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.counters.epoch

    @property
    def trainable(self) -> Trainable:
        """What a checkpoint saves besides the counters and the RNG states."""
        return Trainable(self.model, self.optimizer, self.scaler, self.components)

    def autocast(self):
        """The run's autocast context (a no-op in fp32)."""
        return autocast(self.device, self.precision)

    # -- checkpoints --------------------------------------------------------------------
    def save(self, best: bool, record: dict[str, Any]) -> None:
        """Checkpoint the completed epoch with its metrics ``record``; the first one of a staged run swaps it in.

        Called on every rank (their RNG states are gathered); rank 0 writes.
        """
        rngs = distributed.gather_objects(rng_state(self.device), self.dist)
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.run_dir, self.cfg, self.data, self.trainable, self.counters, rngs, best=best, record=record
        )
        if self.staging is not None:
            self.staging.commit()
            self.run_dir = self.ctx.run_dir = self.staging.target
            self.staging = None
            self.step_log.moved(self.run_dir)

    def resume(self) -> None:
        """Restore the last completed epoch from the run directory's training state (none: start at epoch 0)."""
        if (self.run_dir / STATE_FILE).exists():
            self.counters, rngs = load_checkpoint(self.run_dir, self.trainable, self.device)
            set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0], self.device)
        self.resumed = True
        if self.dist.is_main:
            truncate_metrics(self.run_dir, self.epoch)

    # -- training -------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``cfg.epochs`` (or ``stop_after`` more epochs); return this call's metrics."""
        if self.dist.is_main:
            write_config(self.run_dir, self.cfg)
            record_invocation(self.run_dir, self.plugins, self.device, resumed=self.resumed, from_epoch=self.epoch)
            self.resumed = True  # a later fit() continues this run
        history: list[dict[str, Any]] = []
        last = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, self.epoch + stop_after)
        self.step_log.open(self.run_dir, self.counters.step, self.epoch)
        with self.step_log.closing(), training_progress(self.console, disable=self.quiet) as progress:
            robust = robust_text(read_metrics(self.run_dir)[-1:] if self.epoch and not self.quiet else [])
            task = progress.add_task(
                "train", total=(last - self.epoch) * len(self.loader), loss=0.0, acc=0.0, ips=0.0, robust=robust
            )
            while self.epoch < last:
                progress.update(task, description=f"epoch {self.epoch + 1}/{self.cfg.epochs}")
                record = self.run_epoch(progress, task)
                if record is None:
                    break
                history.append(record)
                progress.update(task, robust=robust_text(history[-1:]))
        if history and not self.quiet:
            self.console.print(summary(history[-1], self.cfg, self.counters, self.run_dir))
        return history

    def run_epoch(self, progress, task) -> dict[str, Any] | None:
        """Train one epoch, evaluate, checkpoint and log it; its record (``None``: ``--early-stop`` ended the run)."""
        train = self.train_epoch(progress, task)
        self.counters.epoch += 1
        self.counters.elapsed += train["epoch_seconds"]
        if self.cfg.early_stop:
            check = check_accuracy(self.model, *self.first_batch, self.cfg.threat, self.dist, self.autocast)
            if collapsed(self.counters.early_stop_acc, check):
                self._stop_early(check)
                return None
            self.counters.early_stop_acc = train["early_stop_acc"] = check
        evals = self.evaluate()
        record = {
            "epoch": self.epoch,
            "step": self.counters.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **train,
            **evals,
            "elapsed_seconds": self.counters.elapsed,
        }
        best = evals["robust_acc"] > self.counters.best_robust
        self.counters.best_robust = max(self.counters.best_robust, evals["robust_acc"])
        self.save(best, record)
        self.step_log.log_epoch(record)
        if not self.quiet:
            self.console.print(epoch_line(record, self.cfg.eval_steps))
        return record

    def train_epoch(self, progress, task) -> dict[str, float]:
        """One pass over the training data; the epoch's training figures."""
        stats = EpochStats.zeros(self.device)
        fwd0, bwd0 = self.passes.forward, self.passes.backward
        start = time.perf_counter()
        n_batches = len(self.loader)
        done = progress.tasks[task].completed if progress.tasks else 0
        check_every = max(1, n_batches // 20)  # one host sync every few batches, not every step
        self.step_log.restart_clock()
        for i, (x, y) in enumerate(self.loader.epoch(self.epoch)):
            if i == 0:
                self.first_batch = (x, y)  # what --early-stop checks after the epoch (Wong et al.)
            values = self.train_step(x, y, stats, measure=self.step_log.due(self.counters.step + 1))
            if values is not None:
                self.step_log.log_step(self.counters.step, self.epoch + 1, values)
            if (i + 1) % check_every == 0 or i + 1 == n_batches:
                loss_sum, correct, seen = stats.totals(self.dist)
                self._check_finite(loss_sum)
                elapsed = max(time.perf_counter() - start, 1e-9)
                progress.update(
                    task, completed=done + i + 1, loss=loss_sum / seen, acc=correct / seen, ips=seen / elapsed
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss_sum, correct, seen = stats.totals(self.dist)
        local_seen = max(stats.seen, 1)
        return {
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "img_per_s": seen / max(seconds, 1e-9),
            "fwd_per_sample": (self.passes.forward - fwd0) / local_seen,
            "bwd_per_sample": (self.passes.backward - bwd0) / local_seen,
            "epoch_seconds": seconds,
            **stats.energy_summary(self.dist),
        }

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, stats: EpochStats, *, measure: bool = False
    ) -> dict[str, float] | None:
        """One optimisation step on a batch (plus the source's extra images, if the run has a source);
        with ``measure``, its scalars for the live logs (:func:`~energyat_core.step_log.step_values`)."""
        cfg, model = self.cfg, self.model
        attack = cast(Attack, self.components["attack"])
        loss_fn = cast(Loss, self.components["loss"])
        weighter = cast(Weighter, self.components["weighter"])
        if "source" in self.components:
            x, y = self._mix_in(cast(DataSource, self.components["source"]), x, y)
        self._set_lr()
        with model_mode(model, training=cfg.attack_bn == "train"), self.autocast():
            x_adv = attack(model, x, y)
        batch = Batch(model, x, y, x_adv if x_adv is x else x_adv.detach())  # no attack: one forward, not two
        with self.autocast():
            per_sample = loss_fn(batch)
            weights = weighter(batch)
            stats.add_energies(batch, self.passes.paused)
        loss = (weights.detach().float() * per_sample.float()).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.params, self.dist)
        values = None
        if measure:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)  # the true gradients; the step below uses them as they are
            values = step_values(loss, batch, self.params, self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.counters.step += 1
        stats.add(loss, batch)
        self.step_log.tick(len(y) * self.dist.world_size)
        return values

    def _mix_in(self, source: DataSource, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch with the source's extra images shuffled in."""
        x_extra, y_extra = source.next_batch(len(y))
        order = torch.randperm(len(y) + len(y_extra), device=x.device)
        x = torch.cat([x, x_extra.to(x.dtype)])[order]
        y = torch.cat([y, y_extra])[order]
        if self.cfg.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _set_lr(self) -> None:
        """The scheduled learning rate (and cycled momentum, if any) of the current step."""
        apply_schedule(self.optimizer, self.cfg, self.counters.step, self.total_steps)

    def _stop_early(self, check: float) -> None:
        """``--early-stop`` saw a collapse: go back to the last checkpoint (the epoch before) and end the run."""
        before, epoch = self.counters.early_stop_acc, self.epoch
        self.counters, _ = load_checkpoint(self.run_dir, self.trainable, self.device)
        self.stopped_early = True
        if not self.quiet:
            self.console.print(
                f"[yellow]early stop:[/] PGD-{CHECK_STEPS} accuracy on the first training batch fell from "
                f"{100 * before:.1f}% to {100 * check:.1f}% in epoch {epoch} (catastrophic overfitting); "
                f"the run keeps epoch {self.epoch}'s weights"
            )

    def _check_finite(self, loss_sum: float) -> None:
        if not math.isfinite(loss_sum):
            raise NonFiniteError(
                f"the training loss became non-finite at epoch {self.epoch + 1}, step {self.counters.step}; "
                + self._kept(self.epoch),
                "lower --lr, use --precision fp32, or check the loss options; then train again with --overwrite",
            )

    def _kept(self, epoch: int) -> str:
        """What a failure leaves, when ``epoch`` epochs are checkpointed."""
        if self.staging is not None:
            return f"no checkpoint of the new run was written and the old run in '{self.staging.target}' is untouched"
        if epoch == 0:
            return f"no checkpoint was written in '{self.run_dir}'"
        return f"the last good checkpoint (epoch {epoch}) is kept in '{self.run_dir}'"

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Clean/PGD accuracy and energies on the held-out subset (shared out over ranks), checked finite."""
        evals = held_out_eval(self.model, self.eval_x, self.eval_y, self.cfg, self.dist, self.autocast)
        for key, value in evals.items():
            if not math.isfinite(value):
                raise NonFiniteError(
                    f"evaluation gave a non-finite {key} after epoch {self.epoch}; " + self._kept(self.epoch - 1),
                    "lower --lr or use --precision fp32, then train again with --overwrite",
                )
        return evals
