"""energyat from Python: train, load, attack and evaluate with the engine the CLI uses.

::

    import energyat_core as ea

    run = ea.train(method="pgd-at", backbone="small_cnn", epochs=2, out="runs/demo")
    model = ea.load("runs/demo")                       # a plain nn.Module on [0, 1] images
    pgd = ea.attack("pgd", model, eps=8 / 255, steps=10)
    x_adv = pgd(x, y)
    report = ea.evaluate(model, (x, y), attacks=["pgd:50", "fgsm"], evaluators=["pgd"])

Every name (method, attack, evaluator, backbone) is any registered component, first- or
third-party; options are validated by the component's declaration as on the command line.
``energyat train`` and ``energyat eval`` are thin layers over :func:`train_config` and
:func:`evaluate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from torch import nn

from energyat_core import distributed
from energyat_core.components import Attack, Evaluator, RunContext
from energyat_core.errors import ConfigError
from energyat_core.evaluation import AttackEvaluator, batched, predict, report
from energyat_core.options import as_dict
from energyat_core.precision import autocast
from energyat_core.registry import Registry, get_registry
from energyat_core.run_config import RunConfig, compose
from energyat_core.run_dir import RunLock, check_out, clean_leftovers, prepare_run_dir, read_metrics
from energyat_core.threat import DEFAULT_EPS, ThreatModel, check_norm


# -- training ---------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained run: its directory, config, per-epoch metrics and model (on [0, 1] images, eval mode)."""

    dir: Path
    cfg: RunConfig
    metrics: list[dict[str, Any]]
    model: nn.Module


def train(
    config: RunConfig | str | Path | None = None,
    *,
    out: str | Path = "runs/python",
    overwrite: bool = False,
    stop_after: int | None = None,
    quiet: bool = True,
    sets: Sequence[str] = (),
    registry: Registry | None = None,
    **settings: Any,
) -> Run:
    """Train a run, as ``energyat train`` does; the trained :class:`Run`.

    ``config`` is a composed :class:`~energyat_core.run_config.RunConfig`, or a TOML/JSON
    config file; ``settings`` are what the flags give (``method="trades"``, ``epochs=5``,
    ``eps=8/255``, ``backbone="timm:resnet18"``, ``attack={"name": "pgd", "steps": 7}``)
    and ``sets`` what ``--set`` gives (``["attack.steps=7"]``).
    """
    registry = registry or get_registry()
    if isinstance(config, RunConfig):
        if settings or sets:
            raise ConfigError(
                "train() got a RunConfig and settings", "change the RunConfig, or pass settings without it"
            )
        cfg = config
    else:
        cfg = compose(registry, config_file=None if config is None else str(config), flags=settings, sets=list(sets))
    trainer = train_config(cfg, Path(out), registry, Console(), overwrite=overwrite, stop_after=stop_after, quiet=quiet)
    trainer.model.eval()
    return Run(trainer.run_dir, cfg, read_metrics(trainer.run_dir), trainer.model)


def train_config(
    cfg: RunConfig,
    run_dir: Path,
    registry: Registry,
    console: Console,
    *,
    overwrite: bool = False,
    stop_after: int | None = None,
    quiet: bool = False,
) -> Any:
    """Train ``cfg`` into ``run_dir`` under the run directory's rules; the finished Trainer.

    The rules (one writer, nothing replaced before the new run's first checkpoint, no litter)
    are :mod:`energyat_core.run_dir`'s; here they are applied in order: lock, clean up after a
    killed writer, decide where to write, build, train.
    """
    from energyat_core.trainer import Trainer

    info = distributed.from_environment()
    check_out(run_dir)
    with contextlib.ExitStack() as stack:
        staging = None
        if info.is_main:  # the other ranks never write into the run directory
            stack.enter_context(RunLock(run_dir))
            clean_leftovers(run_dir)
            staging = prepare_run_dir(run_dir, cfg, overwrite=overwrite)
        if staging is not None:  # the new run is built and trained beside the old one until its first checkpoint
            stack.callback(staging.discard)
            staging.begin()
        trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet, staging=staging)
        if not quiet:
            parts = ", ".join(f"{kind} {part.name}" for kind, part in cfg.parts.items())
            replacing = " (replacing the run there after the first epoch)" if staging is not None else ""
            console.print(
                f"training [bold]{cfg.method or 'custom'}[/]: {parts} on {trainer.device} ({trainer.precision})"
                f" -> {run_dir}{replacing}"
            )
        trainer.fit(stop_after)
    return trainer


# -- models -----------------------------------------------------------------------------------
def load(
    source: str | Path,
    *,
    backbone: str | None = None,
    dataset: str = "cifar10",
    checkpoint: str = "model",
    normalize: str | None = None,
    device: str | torch.device = "cpu",
    registry: Registry | None = None,
) -> nn.Module:
    """A trained model as a plain ``nn.Module`` on [0, 1] images, in eval mode.

    ``source`` is a run directory (its config names the architecture) or a safetensors
    weights file, which needs ``backbone`` (and the ``dataset`` whose classes it was trained
    on); its normalisation is what the file records, else ``normalize`` (``"dataset"``,
    ``"none"`` or ``"MEAN,STD"``, as ``--normalize``), else the dataset's.
    """
    from energyat_core.saved_run import load_run, load_weights_file

    registry = registry or get_registry()
    dev = torch.device(device)
    path = Path(source)
    if path.is_file():
        if backbone is None:
            raise ConfigError(
                f"'{path}' is a weights file: load() needs its backbone", "e.g. load(path, backbone='preact_resnet18')"
            )
        loaded = load_weights_file(
            path, backbone=backbone, dataset=dataset, device=dev, registry=registry, normalize=normalize
        )
        return loaded.model
    return load_run(path, which=checkpoint, device=dev, registry=registry).model


# -- attacks ----------------------------------------------------------------------------------
class AttackFn:
    """A registered attack bound to a model: ``x_adv = fn(x, y)`` (detached, in [0, 1], in the eps-ball).

    The model is used in the mode it is in (``model.eval()`` for an evaluation); gradients
    never reach its parameters.
    """

    def __init__(self, attack: Attack, model: nn.Module) -> None:
        self.attack = attack
        self.model = model

    @property
    def threat(self) -> ThreatModel:
        """The threat model the attack works in."""
        return self.attack.threat

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self.model, x, y)

    def __repr__(self) -> str:
        return f"AttackFn({self.attack.name}, {self.threat.describe()}, {self.attack.config})"


def attack(
    name: str,
    model: nn.Module,
    *,
    eps: float | None = None,
    norm: str = "linf",
    step: float | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    **options: Any,
) -> AttackFn:
    """Any registered attack (``pgd``, ``fgsm-rs``, a plugin's) bound to ``model``: ``fn(x, y) -> x_adv``.

    ``eps``/``norm``/``step`` are the threat model (``eps`` defaults to 8/255 for linf and
    0.5 for l2, as a run's); ``options`` are the attack's own (``steps=10``), validated as
    ``--set attack.OPTION`` is. The attack is set up as a run would set it up, with
    ``seed`` for the parts it initialises (e.g. FGSM-SDI's generator).
    """
    registry = registry or get_registry()
    threat = threat_model(eps, norm, step)
    component = cast(Attack, registry.create("attack", name, **options))
    check_norm(component.norms, "attack", component.name, threat.norm, "norm='{}'")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    component.setup(
        RunContext(device=device, num_classes=num_classes or 0, seed=seed, registry=registry, threat=threat)
    )
    return AttackFn(component, model)


def threat_model(eps: float | None, norm: str, step: float | None = None) -> ThreatModel:
    """A validated :class:`~energyat_core.threat.ThreatModel` (``eps`` None: the norm's default radius)."""
    if norm not in DEFAULT_EPS:
        raise ConfigError(f"unknown norm '{norm}'", "use linf or l2")
    radius = DEFAULT_EPS[norm] if eps is None else float(eps)
    if not 0 <= radius <= (1 if norm == "linf" else float("inf")):
        raise ConfigError(f"eps {radius:g} is out of range for {norm}", "e.g. eps=8/255 (linf) or 0.5 (l2)")
    return ThreatModel(eps=radius, norm=norm, step=step)  # type: ignore[arg-type]


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class EvalSpec:
    """What :func:`evaluate` runs: evaluators and attacks (as evaluators), each ``NAME[:VALUE]`` with options."""

    evaluators: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attacks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def build_runners(registry: Registry, spec: EvalSpec, threat: ThreatModel) -> list[Evaluator]:
    """The evaluators of ``spec`` and one :class:`~energyat_core.evaluation.AttackEvaluator` per attack."""
    runners: list[Evaluator] = [
        cast(Evaluator, registry.create("evaluator", name, **opts)) for name, opts in spec.evaluators
    ]
    for name, opts in spec.attacks:
        fn = cast(Attack, registry.create("attack", name, **opts))
        check_norm(fn.norms, "attack", fn.name, threat.norm)
        runners.append(AttackEvaluator(fn))
    return runners


def evaluate(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    attacks: Sequence[str | tuple[str, dict[str, Any]]] = (),
    evaluators: Sequence[str | tuple[str, dict[str, Any]]] = ("pgd",),
    eps: float | None = None,
    norm: str = "linf",
    batch_size: int = 256,
    precision: str = "fp32",
    seed: int = 0,
    dataset: str = "?",
    architecture: str = "?",
    registry: Registry | None = None,
    run_dir: Path | None = None,
    image_data: Any = None,
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean accuracy and the per-point worst case over evaluators and attacks: ``energyat eval``'s report.

    ``data`` is ``(x, y)`` with ``x`` in [0, 1]; each evaluator or attack is ``"NAME"``,
    ``"NAME:VALUE"`` (the first option) or ``("NAME", {options})``. The model is put in eval
    mode. Returns the eval.json fields (RobustBench's names, ``attacks``, ``evaluators``).
    ``run_dir`` (where evaluators may keep resumable state), ``image_data`` (the dataset) and
    ``extras`` (``progress``, ``console``) reach the evaluators through their RunContext.
    """
    registry = registry or get_registry()
    threat = threat_model(eps, norm)
    spec = EvalSpec(
        [_named(registry, "evaluator", e) for e in evaluators], [_named(registry, "attack", a) for a in attacks]
    )
    runners = build_runners(registry, spec, threat)
    x, y = data
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    model.eval()
    torch.manual_seed(seed)
    num_classes = image_data.num_classes if image_data is not None else int(y.max().item()) + 1 if len(y) else 0
    ctx = RunContext(
        device=device, num_classes=num_classes, data=image_data, run_dir=run_dir, precision=precision, seed=seed,
        registry=registry, threat=threat, extras=dict(extras or {}),
    )  # fmt: skip
    per_attack: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    progress = ctx.extras.get("progress")
    with autocast(device, precision):
        clean = torch.cat([predict(model, x[s], batch_size).argmax(1) == y[s] for s in batched(len(y), batch_size)])
        for runner in runners:
            runner.setup(ctx)
            task = progress.add_task(runner.name, total=None) if progress is not None else None
            results = runner.run(model, x, y, eps=threat.eps, norm=threat.norm, batch_size=batch_size)
            per_attack.update(results)
            if runner.report_field:
                groups.setdefault(runner.report_field, []).extend(results)
            if progress is not None:
                progress.update(task, total=1, completed=1)
    result = report(
        clean=clean, per_attack=per_attack, eps=threat.eps, norm=threat.norm, dataset=dataset,
        architecture=architecture, groups=groups,
    )  # fmt: skip
    result["seed"], result["precision"] = seed, precision
    result["evaluators"] = {r.name: as_dict(r.config) for r in runners}
    return result


def _named(registry: Registry, kind: str, item: str | tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``"NAME[:VALUE]"`` or ``("NAME", options)`` -> (registered name, options)."""
    if isinstance(item, str):
        entry, opts = registry.split_spec(kind, item)
        return entry.name, opts
    name, opts = item
    return name, dict(opts)
