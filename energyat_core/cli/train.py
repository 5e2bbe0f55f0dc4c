"""``energyat train``: compose a method from a preset, a config file and flags, and train it."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import typer
from rich.console import Console

from energyat_core import distributed
from energyat_core.engine import CONFIG_FILE, Trainer, prepare_run_dir
from energyat_core.errors import ConfigError, RunDirError
from energyat_core.registry import get_registry
from energyat_core.runconfig import RunConfig, compose

HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(RunConfig)}


def add_commands(app: typer.Typer) -> None:
    app.command("train")(train)


def _opt(name: str, *flags: str, **kwargs):
    return typer.Option(None, *flags, help=HELP[name], show_default=False, **kwargs)


def train(
    method: str = typer.Option(
        None, "--method", "-m", help="Method preset, e.g. pgd-at, trades, weat (`energyat describe method` lists them)."
    ),
    attack: str = _opt("attack", "--attack"),
    loss: str = _opt("loss", "--loss"),
    weighter: str = _opt("weighter", "--weighter"),
    backbone: str = _opt("backbone", "--backbone"),
    dataset: str = _opt("dataset", "--dataset"),
    data_dir: str = _opt("data_dir", "--data-dir"),
    source: str = _opt("source", "--source"),
    proxy: str = typer.Option(
        None,
        "--proxy",
        help="Proxy-distribution images (.npz of uint8 NHWC images + labels) "
        "mixed into every batch; short for --source proxy:PATH (needs energyat-proxy).",
    ),
    proxy_ratio: str = typer.Option(
        None,
        "--proxy-ratio",
        help="Proxy images per real image in each batch (default 1, i.e. 128+128); short for --set source.ratio=R.",
    ),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Component option KIND.NAME=VALUE (kinds: attack, loss, "
        "weighter, backbone, dataset); repeatable, e.g. --set attack.steps=7.",
    ),
    config: str = typer.Option(
        None, "--config", help="TOML file with run settings and [attack]/[loss]/... tables; flags override it."
    ),
    epochs: int = _opt("epochs", "--epochs"),
    batch_size: int = _opt("batch_size", "--batch-size"),
    optimizer: str = _opt("optimizer", "--optimizer"),
    lr: str = _opt("lr", "--lr"),
    momentum: float = _opt("momentum", "--momentum"),
    weight_decay: float = _opt("weight_decay", "--weight-decay"),
    schedule: str = _opt("schedule", "--schedule"),
    milestones: str = _opt("milestones", "--milestones"),
    gamma: float = _opt("gamma", "--gamma"),
    warmup: float = _opt("warmup", "--warmup"),
    seed: int = _opt("seed", "--seed"),
    device: str = _opt("device", "--device"),
    precision: str = _opt("precision", "--precision"),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help=HELP["compile"], show_default=False),
    augment: bool = typer.Option(None, "--augment/--no-augment", help=HELP["augment"], show_default=False),
    attack_bn: str = _opt("attack_bn", "--attack-bn"),
    eval_n: int = _opt("eval_n", "--eval-n"),
    eval_steps: int = _opt("eval_steps", "--eval-steps"),
    eps: str = _opt("eps", "--eps"),
    norm: str = _opt("norm", "--norm"),
    max_train: int = _opt("max_train", "--max-train"),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<method>-<time>)."),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue the run in this directory from its last completed epoch (all other flags come from its config).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    stop_after: int = typer.Option(
        None,
        "--stop-after",
        help="Stop after this many epochs of this invocation (e.g. to fit a job slot); continue later with --resume.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
) -> None:
    """Train a classifier: a preset (--method) or parts (--attack/--loss/--weighter/--backbone)."""
    registry = get_registry()
    console = Console()
    if resume is not None:
        run_dir = resume
        config_path = run_dir / CONFIG_FILE
        if not config_path.exists():
            raise RunDirError(
                f"'{run_dir}' holds no run to resume (no {CONFIG_FILE})",
                "give the run directory of an earlier `energyat train`",
            )
        cfg = RunConfig.from_dict(json.loads(config_path.read_text()))
        trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet)
        if (run_dir / "state.safetensors").exists():
            trainer.resume()
        if trainer.epoch >= cfg.epochs:
            console.print(f"run '{run_dir}' is already complete ({trainer.epoch}/{cfg.epochs} epochs)")
            return
        if not quiet:
            console.print(f"resuming '{run_dir}' after epoch {trainer.epoch}")
        trainer.fit(stop_after)
        distributed.shutdown(trainer.dist)
        return
    flags = {
        "method": method,
        "attack": attack,
        "loss": loss,
        "weighter": weighter,
        "backbone": backbone,
        "dataset": dataset,
        "data_dir": data_dir,
        "source": source,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "milestones": milestones,
        "gamma": gamma,
        "warmup": warmup,
        "seed": seed,
        "device": device,
        "precision": precision,
        "compile": compile_,
        "augment": augment,
        "attack_bn": attack_bn,
        "eval_n": eval_n,
        "eval_steps": eval_steps,
        "eps": eps,
        "norm": norm,
        "max_train": max_train,
    }
    sets = list(set_ or [])
    if proxy is not None:
        flags["source"] = f"proxy:{Path(proxy).resolve()}"  # absolute: --resume may run elsewhere
    if proxy_ratio is not None:
        sets.append(f"source.ratio={proxy_ratio}")
    cfg = compose(registry, config_file=config, flags=flags, sets=sets)
    info = distributed.from_environment()
    if out is None and info.enabled:
        raise ConfigError("--out is required under torchrun", "name the run directory, e.g. --out runs/ddp")
    run_dir = out or Path("runs") / f"{cfg.method or cfg.attack}-{time.strftime('%Y%m%d-%H%M%S')}"
    if info.is_main:  # the other ranks never write into the run directory
        prepare_run_dir(run_dir, cfg, resume=False, overwrite=overwrite)
    trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet)
    if not quiet:
        console.print(
            f"training [bold]{cfg.method or 'custom'}[/]: attack {cfg.attack}, loss {cfg.loss}, weighter "
            f"{cfg.weighter}, backbone {cfg.backbone}, dataset {cfg.dataset} on {trainer.device} ({trainer.precision})"
            f" -> {run_dir}"
        )
    trainer.fit(stop_after)
    distributed.shutdown(trainer.dist)
