"""``energyat train``: compose a method from a preset, a config file and flags, and train it.

The flags are not written here: one flag per run kind of :data:`~energyat_core.kinds.KINDS`
(``--attack``, ``--loss``, ...) and one per setting of
:class:`~energyat_core.run_config.RunConfig` (``--epochs``, ``--eps``, ...), with the help
text, type and bounds of its declaration. Values reach :func:`~energyat_core.run_config.compose`
as given, which converts and validates them once.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console

from energyat_core import distributed
from energyat_core.errors import ConfigError, RunDirError
from energyat_core.kinds import RUN_KINDS
from energyat_core.options import resolved_types, rule_text
from energyat_core.registry import get_registry
from energyat_core.run_config import RunConfig, compose, setting_fields
from energyat_core.run_dir import CONFIG_FILE, STATE_FILE, prepare_run_dir
from energyat_core.trainer import Trainer


def add_commands(app: typer.Typer) -> None:
    app.command("train")(train)


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _setting_param(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    """A Typer option for one RunConfig setting, from its declaration."""
    help_text = f.metadata.get("help", "")
    if f.default is not dataclasses.MISSING and f.default is not None:
        help_text += f" (default: {_show(f.default)})"
    if tp is bool or tp == (bool | None):
        flag = flag_name(f.name)
        option = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool | None)
    rule = rule_text(f)
    metavar = _metavar(tp)
    help_text += f"; {rule}" if rule else ""
    option = typer.Option(None, flag_name(f.name), help=help_text, show_default=False, metavar=metavar)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None)


def _metavar(tp: Any) -> str:
    """``sgd|adam|adamw`` for choices, ``INT`` for ``int | None``, ``FLOAT,...`` for lists."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in args)
    if typing.get_origin(tp) in (tuple, list):
        return f"{_metavar(args[0])},..." if args else "VALUE,..."
    if args and typing.get_origin(tp) is not None:  # X | None
        return _metavar(args[0])
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, "VALUE")


def _show(value: Any) -> str:
    from energyat_core.evaluation import eps_text

    if isinstance(value, float) and 0 < value < 1 and eps_text(value, "linf").endswith("/255"):
        return eps_text(value, "linf")
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _kind_param(kind: Any) -> inspect.Parameter:
    default = f" (default: {kind.default})" if kind.default else " (default: none)"
    option = typer.Option(
        None,
        kind.flag,
        help=f"{kind.help[0].upper()}{kind.help[1:]}{default}; `energyat describe {kind.name}` lists them.",
        show_default=False,
        metavar="NAME",
    )
    return inspect.Parameter(kind.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None)


def _fixed_params() -> list[inspect.Parameter]:
    """The flags that are about this invocation, not about the run."""
    kw = inspect.Parameter.KEYWORD_ONLY

    def p(name: str, annotation: Any, option: Any) -> inspect.Parameter:
        return inspect.Parameter(name, kw, default=option, annotation=annotation)

    return [
        p(
            "set_",
            list[str] | None,
            typer.Option(
                None,
                "--set",
                metavar="KIND.OPTION=VALUE",
                help=f"A component option (kinds: {', '.join(k.name for k in RUN_KINDS)}); repeatable, "
                "e.g. --set attack.steps=7. `energyat describe KIND NAME` lists a component's options.",
            ),
        ),
        p(
            "config",
            str | None,
            typer.Option(
                None,
                "--config",
                metavar="FILE",
                help="TOML file (or a run's config.json) with settings and one table per part "
                "(attack, loss, ...); flags override it.",
            ),
        ),
        p("out", Path | None, typer.Option(None, "--out", "-o", help="Run directory (default: runs/METHOD-TIME).")),
        p(
            "resume",
            Path | None,
            typer.Option(
                None,
                "--resume",
                help="Continue the run in this directory from its last completed epoch "
                "(all other flags come from its config).",
            ),
        ),
        p("overwrite", bool, typer.Option(False, "--overwrite", help="Replace a run already in --out.")),
        p(
            "stop_after",
            int | None,
            typer.Option(
                None,
                "--stop-after",
                help="Stop after this many epochs of this invocation (e.g. to fit a job slot); "
                "continue later with --resume.",
            ),
        ),
        p("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bar or tables.")),
    ]


def _signature() -> inspect.Signature:
    hints = resolved_types(RunConfig)
    method = setting_fields()[0]
    assert method.name == "method"
    params = [
        inspect.Parameter(
            "method",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None, "--method", "-m", metavar="NAME", help="Method preset (`energyat describe method` lists them)."
            ),
            annotation=str | None,
        ),
        *(_kind_param(kind) for kind in RUN_KINDS),
        *(_setting_param(f, hints[f.name]) for f in setting_fields()[1:]),
        *_fixed_params(),
    ]
    return inspect.Signature(params)


def train(**kwargs: Any) -> None:
    """Train a classifier: a preset (--method) or parts (--attack/--loss/--weighter/--backbone/...)."""
    fixed = {p.name for p in _fixed_params()}
    flags = {k: v for k, v in kwargs.items() if k not in fixed}
    run(flags, **{k: v for k, v in kwargs.items() if k in fixed})


train.__signature__ = _signature()  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]


def run(
    flags: dict[str, Any],
    *,
    set_: list[str] | None = None,
    config: str | None = None,
    out: Path | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    quiet: bool = False,
) -> None:
    """What ``energyat train`` does with its parsed flags."""
    registry = get_registry()
    console = Console()
    if resume is not None:
        _resume(registry, console, resume, stop_after=stop_after, quiet=quiet)
        return
    cfg = compose(registry, config_file=config, flags=flags, sets=list(set_ or []))
    info = distributed.from_environment()
    if out is None and info.enabled:
        raise ConfigError("--out is required under torchrun", "name the run directory, e.g. --out runs/ddp")
    run_dir = out or Path("runs") / f"{cfg.method or cfg.spec('attack')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if info.is_main:  # the other ranks never write into the run directory
        prepare_run_dir(run_dir, cfg, resume=False, overwrite=overwrite)
    trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet)
    if not quiet:
        parts = ", ".join(f"{kind} {part.name}" for kind, part in cfg.parts.items())
        console.print(
            f"training [bold]{cfg.method or 'custom'}[/]: {parts} on {trainer.device} ({trainer.precision})"
            f" -> {run_dir}"
        )
    trainer.fit(stop_after)
    distributed.shutdown(trainer.dist)


def _resume(registry: Any, console: Console, run_dir: Path, *, stop_after: int | None, quiet: bool) -> None:
    import json

    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise RunDirError(
            f"'{run_dir}' holds no run to resume (no {CONFIG_FILE})",
            "give the run directory of an earlier `energyat train`",
        )
    cfg = RunConfig.from_dict(json.loads(config_path.read_text()), registry)
    trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet)
    if (run_dir / STATE_FILE).exists():
        trainer.resume()
    if trainer.epoch >= cfg.epochs:
        console.print(f"run '{run_dir}' is already complete ({trainer.epoch}/{cfg.epochs} epochs)")
        return
    if not quiet:
        console.print(f"resuming '{run_dir}' after epoch {trainer.epoch}")
    trainer.fit(stop_after)
    distributed.shutdown(trainer.dist)
