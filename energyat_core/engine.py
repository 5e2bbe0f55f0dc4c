"""The training engine: one step is attack -> per-sample loss -> weights -> weighted mean -> update.

:class:`Trainer` builds everything a :class:`~energyat_core.runconfig.RunConfig` names,
trains epoch by epoch, evaluates on a held-out subset after each epoch, logs
``metrics.jsonl`` and writes checkpoints atomically, so that ``resume()`` continues a
killed run exactly where its last completed epoch left it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console

from energyat_core import checkpoint as ckpt
from energyat_core import distributed
from energyat_core.components import Attack, Backbone, Batch, Dataset, DataSource, Loss, RunContext, Weighter
from energyat_core.data import ImageData, make_loader
from energyat_core.errors import ConfigError, NonFiniteError, RunDirError
from energyat_core.evaluation import quick_eval
from energyat_core.models import Classifier, build_classifier
from energyat_core.precision import autocast, resolve_device, resolve_precision
from energyat_core.progress import table, training_progress
from energyat_core.registry import Registry
from energyat_core.runconfig import RunConfig
from energyat_core.schedules import lr_at

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "model_best.safetensors"


@dataclass
class PassCounter:
    """Counts forward and backward passes through the model, in samples."""

    forward: int = 0
    backward: int = 0

    def attach(self, model: torch.nn.Module) -> None:
        def on_forward(_module, _inputs, output):
            n = output.shape[0]
            self.forward += n
            if output.requires_grad:
                output.register_hook(lambda grad: self._count_backward(n))

        model.register_forward_hook(on_forward)

    def _count_backward(self, n: int) -> None:
        self.backward += n


@dataclass
class EpochStats:
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def build_data(registry: Registry, cfg: RunConfig) -> ImageData:
    """Load and validate the run's dataset (train subset if ``max_train``)."""
    dataset = cast(Dataset, registry.create("dataset", cfg.dataset, **cfg.component_options("dataset")))
    data = dataset.load(cfg.data_dir)
    data.validate()
    if cfg.max_train is not None:
        data = data.subset_train(cfg.max_train)
    return data


def build_model(registry: Registry, cfg: RunConfig, data: ImageData, device: torch.device) -> torch.nn.Module:
    backbone = cast(Backbone, registry.create("backbone", cfg.backbone, **cfg.component_options("backbone")))
    model = build_classifier(backbone, data.num_classes, data.mean, data.std).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(cfg: RunConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}  # one kernel for the whole update
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, **fast
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def prepare_run_dir(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory unless ``--resume`` or ``--overwrite``."""
    config_path = run_dir / CONFIG_FILE
    if resume or not config_path.exists():
        return
    if overwrite:
        for name in (CONFIG_FILE, METRICS_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE, BEST_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return
    try:
        same = json.loads(config_path.read_text()) == json.loads(cfg.to_json())
    except (OSError, json.JSONDecodeError):
        same = False
    what = "this run already" if same else "a different run"
    raise RunDirError(
        f"output directory '{run_dir}' already holds {what}",
        "pass --resume to continue it, --overwrite to replace it, or choose another --out",
    )


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
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.console = console or Console()
        self.dist = distributed.from_environment()
        self.quiet = quiet or not self.dist.is_main  # only rank 0 talks and writes
        self.device = distributed.setup(self.dist, resolve_device(cfg.device))
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"--batch-size {cfg.batch_size} does not split over {self.dist.world_size} processes",
                f"use a multiple of {self.dist.world_size} (the batch size is global: each rank takes an equal share)",
            )
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.data = build_data(registry, cfg)
        self.model = build_model(registry, cfg, self.data, self.device)
        distributed.broadcast_parameters(self.model, self.dist)
        self.passes = PassCounter()
        self.passes.attach(self.model)
        if cfg.compile:
            self._compile()

        self.ctx = RunContext(
            device=self.device,
            num_classes=self.data.num_classes,
            data=self.data,
            run_dir=self.run_dir,
            model=self.model,
            precision=self.precision,
            extras={"seed": cfg.seed, "eps": cfg.eps, "norm": cfg.norm},
        )
        self.attack = cast(Attack, registry.create("attack", cfg.attack, **cfg.component_options("attack")))
        self.loss = cast(Loss, registry.create("loss", cfg.loss, **cfg.component_options("loss")))
        self.weighter = cast(Weighter, registry.create("weighter", cfg.weighter, **cfg.component_options("weighter")))
        self.source = (
            cast(DataSource, registry.create("source", cfg.source, **cfg.component_options("source")))
            if cfg.source
            else None
        )
        for component in self.components.values():
            component.setup(self.ctx)
        if self.dist.enabled:  # same initial weights everywhere, different attack noise per rank
            torch.manual_seed(cfg.seed + 7919 * self.dist.rank)

        self.optimizer = make_optimizer(cfg, self.model, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.loader = make_loader(  # DeviceLoader, or StreamingLoader if the training images stay on disk
            self.data,
            cfg.batch_size // self.dist.world_size,
            self.device,
            shuffle=True,
            augment=self.data.augment if cfg.augment is None else cfg.augment,
            drop_last=len(self.data.train_y) > cfg.batch_size,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            channels_last=cfg.channels_last and self.device.type == "cuda",
        )
        n_eval = min(cfg.eval_n, len(self.data.test_y))
        shard = slice(self.dist.rank, n_eval, self.dist.world_size)  # each rank evaluates its share
        self.eval_x = (self.data.test_x[:n_eval][shard].float() / 255).to(self.device)
        self.eval_y = self.data.test_y[:n_eval][shard].to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.total_steps = cfg.epochs * len(self.loader)
        self.epoch = 0  # completed epochs
        self.step = 0
        self.best_robust = -1.0
        self.elapsed = 0.0

    # -- construction helpers ---------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        parts = {"attack": self.attack, "loss": self.loss, "weighter": self.weighter}
        if self.source is not None:
            parts["source"] = self.source
        return parts

    def _compile(self) -> None:
        """torch.compile the forward pass; fall back to eager, with one warning, if compiling fails."""
        model, console = cast(Classifier, self.model), self.console
        try:
            compiled = torch.compile(model.forward_eager)  # type: ignore[arg-type, operator]
        except Exception as err:  # compilation is an optimisation, never a reason to stop
            console.print(f"[yellow]warning:[/] torch.compile is unavailable here ({err}); running eagerly")
            return

        def forward(x):
            try:
                return compiled(x)
            except Exception as err:  # compilation happens lazily, at the first call of each graph
                reason = str(err).splitlines()[0][:200]
                console.print(f"[yellow]warning:[/] torch.compile failed ({reason}); running eagerly")
                model.set_compiled(None)
                return model.forward_eager(x)

        model.set_compiled(forward)

    def autocast(self):
        return autocast(self.device, self.precision)

    # -- checkpoints --------------------------------------------------------------------
    def _model_metadata(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_json(),
            "num_classes": self.data.num_classes,
            "classes": self.data.classes,
            "backbone": self.cfg.backbone,
            "dataset": self.cfg.dataset,
            "epoch": self.epoch,
        }

    def save(self, best: bool) -> None:
        """Write model weights, then the training state (the resume point), atomically.

        Called on every rank (the RNG states of all ranks are gathered); rank 0 writes.
        """
        rngs = distributed.gather_objects(rng_state(self.device), self.dist)
        if not self.dist.is_main:
            return
        meta = self._model_metadata()
        ckpt.save_model(self.run_dir / ckpt.MODEL_FILE, self.model, meta)
        if best:
            ckpt.save_model(self.run_dir / BEST_FILE, self.model, meta)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "components": {k: c.state_dict() for k, c in self.components.items()},
            "epoch": self.epoch,
            "step": self.step,
            "best_robust": self.best_robust,
            "elapsed": self.elapsed,
        }
        ckpt.save_state(self.run_dir / ckpt.STATE_FILE, state, {"config": self.cfg.to_json(), "epoch": self.epoch})

    def resume(self) -> None:
        """Restore the last completed epoch from ``state.safetensors``."""
        state = ckpt.load_state(self.run_dir / ckpt.STATE_FILE)
        ckpt.load_weights(self.model, {k: v.to(self.device) for k, v in state["model"].items()}, str(self.run_dir))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for kind, component in self.components.items():
            component.load_state_dict(state["components"].get(kind, {}))
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_robust = float(state["best_robust"])
        self.elapsed = float(state["elapsed"])
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0], self.device)
        if self.dist.is_main:
            self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metrics lines of epochs after the resume point (written by the killed run)."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        keep = [
            line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= self.epoch
        ]
        path.write_text("".join(line + "\n" for line in keep))

    # -- training -------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, stats: EpochStats) -> None:
        cfg = self.cfg
        if self.source is not None:  # extra data (e.g. proxy images), shuffled in with the real batch
            x_extra, y_extra = self.source.next_batch(len(y))
            order = torch.randperm(len(y) + len(y_extra), device=x.device)
            x = torch.cat([x, x_extra.to(x.dtype)])[order]
            y = torch.cat([y, y_extra])[order]
            if cfg.channels_last and x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(
                self.step,
                self.total_steps,
                schedule=cfg.schedule,
                lr=cfg.lr,
                milestones=cfg.milestones,
                gamma=cfg.gamma,
                warmup=cfg.warmup,
            )
        if cfg.attack_bn == "eval":
            self.model.eval()
        with self.autocast():
            x_adv = self.attack(self.model, x, y)
        self.model.train()
        batch = Batch(self.model, x, y, x_adv.detach())
        with self.autocast():
            per_sample = self.loss(batch)
            weights = self.weighter(batch)
        loss = (weights.detach().float() * per_sample.float()).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.params, self.dist)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        logits = batch._logits.get("adv", batch._logits.get("clean"))
        stats.loss_sum += loss.detach() * len(y)
        if logits is not None:
            stats.correct += (logits.detach().argmax(1) == y).sum()
        stats.seen += len(y)

    def _totals(self, stats: EpochStats) -> tuple[float, float, float]:
        """Loss sum, correct count and images seen, summed over ranks (one host sync)."""
        t = torch.stack(
            [stats.loss_sum.float(), stats.correct.float(), torch.tensor(float(stats.seen), device=self.device)]
        )
        loss_sum, correct, seen = distributed.all_reduce_sum(t, self.dist).tolist()
        return loss_sum, correct, max(seen, 1.0)

    def _check_finite(self, loss_sum: float) -> None:
        if not math.isfinite(loss_sum):
            raise NonFiniteError(
                f"the training loss became non-finite at epoch {self.epoch + 1}, step {self.step}; "
                f"the last good checkpoint (epoch {self.epoch}) is kept in '{self.run_dir}'",
                "lower --lr, use --precision fp32, or check the loss options; then continue with --resume",
            )

    def train_epoch(self, progress, task) -> dict[str, float]:
        stats = EpochStats(torch.zeros((), device=self.device), torch.zeros((), device=self.device, dtype=torch.long))
        fwd0, bwd0 = self.passes.forward, self.passes.backward
        start = time.perf_counter()
        n_batches = len(self.loader)
        done = progress.tasks[task].completed if progress.tasks else 0
        check_every = max(1, n_batches // 20)
        for i, (x, y) in enumerate(self.loader.epoch(self.epoch)):
            self.train_step(x, y, stats)
            if (i + 1) % check_every == 0 or i + 1 == n_batches:
                loss_sum, correct, seen = self._totals(stats)  # one host sync every few batches, not every step
                self._check_finite(loss_sum)
                progress.update(
                    task,
                    completed=done + i + 1,
                    loss=loss_sum / seen,
                    acc=correct / seen,
                    ips=seen / max(time.perf_counter() - start, 1e-9),
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss_sum, correct, seen = self._totals(stats)
        local_seen = max(stats.seen, 1)
        return {
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "img_per_s": seen / max(seconds, 1e-9),
            "fwd_per_sample": (self.passes.forward - fwd0) / local_seen,
            "bwd_per_sample": (self.passes.backward - bwd0) / local_seen,
            "epoch_seconds": seconds,
        }

    def evaluate(self) -> dict[str, float]:
        """Clean/PGD accuracy and energies on the held-out subset (shared out over ranks)."""
        distributed.average_buffers(self.model, self.dist)  # one set of BatchNorm statistics
        local = quick_eval(
            self.model,
            self.eval_x,
            self.eval_y,
            eps=self.cfg.eps,
            norm=self.cfg.norm,
            steps=self.cfg.eval_steps,
            batch_size=max(self.cfg.batch_size, 256),
            autocast=self.autocast,
        )
        if not self.dist.enabled:
            return local
        n = float(len(self.eval_y))
        sums = torch.tensor([v * n for v in local.values()] + [n], dtype=torch.float64, device=self.device)
        *totals, count = distributed.all_reduce_sum(sums, self.dist).tolist()
        return {k: v / max(count, 1.0) for k, v in zip(local, totals, strict=True)}

    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``cfg.epochs`` (or ``stop_after`` more epochs); return this call's metrics."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(json.dumps(json.loads(self.cfg.to_json()), indent=2) + "\n")
        history: list[dict[str, Any]] = []
        last = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, self.epoch + stop_after)
        progress = training_progress(self.console, disable=self.quiet)
        with progress:
            task = progress.add_task("train", total=(last - self.epoch) * len(self.loader), loss=0.0, acc=0.0, ips=0.0)
            while self.epoch < last:
                progress.update(task, description=f"epoch {self.epoch + 1}/{self.cfg.epochs}")
                train = self.train_epoch(progress, task)
                self.epoch += 1
                self.elapsed += train["epoch_seconds"]
                evals = self.evaluate()
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **train,
                    **evals,
                    "elapsed_seconds": self.elapsed,
                }
                for key, value in evals.items():
                    if not math.isfinite(value):
                        raise NonFiniteError(
                            f"evaluation gave a non-finite {key} after epoch {self.epoch}; "
                            f"the last good checkpoint (epoch {self.epoch - 1}) is kept in '{self.run_dir}'",
                            "lower --lr or use --precision fp32, then --resume",
                        )
                best = evals["robust_acc"] > self.best_robust
                self.best_robust = max(self.best_robust, evals["robust_acc"])
                self.save(best)
                if self.dist.is_main:
                    with open(self.run_dir / METRICS_FILE, "a") as f:
                        f.write(json.dumps(record) + "\n")
                history.append(record)
                if not self.quiet:
                    self.console.print(
                        f"epoch {self.epoch}: loss {record['train_loss']:.4f}  clean {evals['clean_acc']:.1%}  "
                        f"PGD-{self.cfg.eval_steps} {evals['robust_acc']:.1%}  E(x) {evals['energy_clean']:.2f}  "
                        f"E(x_adv) {evals['energy_adv']:.2f}  {record['img_per_s']:,.0f} img/s"
                    )
        if history and not self.quiet:
            self.console.print(self.summary(history[-1]))
        return history

    def summary(self, last: dict[str, Any]):
        rows = [
            ("epochs", f"{self.epoch}/{self.cfg.epochs}"),
            ("clean accuracy", f"{last['clean_acc']:.2%}"),
            (f"PGD-{self.cfg.eval_steps} accuracy", f"{last['robust_acc']:.2%}"),
            ("best PGD accuracy", f"{self.best_robust:.2%}"),
            ("mean E(x) / E(x_adv)", f"{last['energy_clean']:.3f} / {last['energy_adv']:.3f}"),
            ("throughput", f"{last['img_per_s']:,.0f} img/s"),
            ("passes per sample (fwd/bwd)", f"{last['fwd_per_sample']:.1f} / {last['bwd_per_sample']:.1f}"),
            ("training time", f"{self.elapsed:.1f} s"),
            ("run directory", str(self.run_dir)),
        ]
        return table("run summary", ["", "value"], rows)
