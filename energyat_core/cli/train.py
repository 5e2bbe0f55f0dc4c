"""``energyat train``: compose a method from a preset, a config file and flags, and train it.

The flags are not written here: one flag per run kind of :data:`~energyat_core.kinds.KINDS`
(``--attack``, ``--loss``, ...) and one per setting of
:class:`~energyat_core.run_config.RunConfig` (``--epochs``, ``--eps``, ...), with the help
text, type and bounds of its declaration. Values reach :func:`~energyat_core.run_config.compose`
as given, which converts and validates them once.

(Slightly over 300 lines: the flag generation, the run-directory flow and ``--resume``/``--from``
are the one concern of starting a training run from the command line.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import time
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console

from energyat_core import distributed
from energyat_core.cli.flags import at_least
from energyat_core.errors import ConfigError, RunDirError
from energyat_core.kinds import RUN_KINDS
from energyat_core.library import train_config
from energyat_core.options import display_value, resolved_types, rule_text
from energyat_core.registry import get_registry
from energyat_core.run_config import RunConfig, compose, setting_fields
from energyat_core.run_dir import CONFIG_FILE, RunLock, clean_leftovers
from energyat_core.trainer import Trainer


def add_commands(app: typer.Typer) -> None:
    app.command("train")(train)


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _setting_param(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    """A Typer option for one RunConfig setting, from its declaration."""
    help_text = f.metadata.get("help", "")
    if f.default is not dataclasses.MISSING and f.default is not None and f.default != ():
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
    """A default as it is typed on the command line: ``8/255``, ``0.5,0.75``."""
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    return display_value(value) if isinstance(value, float) else str(value)


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
        p(
            "from_run",
            Path | None,
            typer.Option(
                None,
                "--from",
                metavar="RUN",
                help="Repeat the run in this directory: its config.json is the config file; "
                "other flags still override it. Give a new --out.",
            ),
        ),
        p("out", Path | None, typer.Option(None, "--out", "-o", help="Run directory (default: runs/METHOD-TIME).")),
        p(
            "resume",
            Path | None,
            typer.Option(
                None,
                "--resume",
                help="Continue the run in this directory from its last completed epoch with its config; "
                "only --epochs (to extend it) and --device may change.",
            ),
        ),
        p("overwrite", bool, typer.Option(False, "--overwrite", help="Replace a run already in --out.")),
        p(
            "stop_after",
            int | None,
            typer.Option(
                None,
                "--stop-after",
                callback=at_least(1, "--stop-after", 1),
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
    from_run: Path | None = None,
) -> None:
    """What ``energyat train`` does with its parsed flags.

    A new run is trained by :func:`energyat_core.library.train_config`, as ``energyat_core.train()``
    trains it from Python.
    """
    registry = get_registry()
    console = Console()
    if resume is not None:
        _check_resume_flags(flags, set_=set_, config=config, out=out, overwrite=overwrite, from_run=from_run)
        _resume(registry, console, resume, flags, stop_after=stop_after, quiet=quiet)
        return
    if from_run is not None:
        config = _from_config(from_run, config)
    cfg = compose(registry, config_file=config, flags=flags, sets=list(set_ or []))
    info = distributed.from_environment()
    if out is None and info.enabled:
        raise ConfigError("--out is required under torchrun", "name the run directory, e.g. --out runs/ddp")
    run_dir = out or Path("runs") / f"{cfg.method or cfg.spec('attack')}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = train_config(cfg, run_dir, registry, console, overwrite=overwrite, stop_after=stop_after, quiet=quiet)
    distributed.shutdown(trainer.dist)


def _from_config(run_dir: Path, config: str | None) -> str:
    """The config file of ``--from RUN``: the run's ``config.json`` (which holds every setting and option)."""
    if config is not None:
        raise ConfigError("--from RUN and --config FILE both give the config file", "give one of them")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(
            f"--from '{run_dir}' holds no run (no {CONFIG_FILE})",
            "give the run directory of an earlier `energyat train`",
        )
    return str(path)


#: the settings a resume may change: extend a run (--epochs), move it to another device (--device)
RESUME_SETTINGS = ("epochs", "device")


def _check_resume_flags(
    flags: dict[str, Any],
    *,
    set_: list[str] | None,
    config: str | None,
    out: Path | None,
    overwrite: bool,
    from_run: Path | None = None,
) -> None:
    """``--resume`` continues a run with its own config: only --epochs and --device may change."""
    given = [flag_name(k) for k, v in flags.items() if v is not None and k not in RESUME_SETTINGS]
    given += [
        flag for flag, value in (("--set", set_), ("--config", config), ("--from", from_run), ("--out", out)) if value
    ]
    given += ["--overwrite"] if overwrite else []
    if given:
        raise ConfigError(
            f"--resume continues a run with the config it was started with; {', '.join(given)} cannot change it",
            "drop them (with --resume only --epochs, --device, --stop-after and --quiet apply), "
            "or start a new run with --out",
        )


def _resume(
    registry: Any, console: Console, run_dir: Path, flags: dict[str, Any], *, stop_after: int | None, quiet: bool
) -> None:
    no_run = RunDirError(
        f"'{run_dir}' holds no run to resume (no {CONFIG_FILE})",
        "give the run directory of an earlier `energyat train`",
    )
    if not run_dir.parent.is_dir() or (run_dir.exists() and not run_dir.is_dir()):
        raise no_run
    info = distributed.from_environment()
    with contextlib.ExitStack() as stack:
        if info.is_main:
            stack.enter_context(RunLock(run_dir))
            clean_leftovers(run_dir)
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file():
            raise no_run
        try:
            document = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunDirError(
                f"cannot read the run's config '{config_path}' ({err})",
                "restore config.json (model.safetensors holds a copy in its metadata), or start a new run",
            ) from None
        if not isinstance(document, dict):
            raise RunDirError(f"'{config_path}' is not a run config", "restore it, or start a new run")
        changes = {k: flags[k] for k in RESUME_SETTINGS if flags.get(k) is not None}
        cfg = RunConfig.from_dict({**document, **changes}, registry)
        trainer = Trainer(cfg, run_dir, registry, console, quiet=quiet)
        trainer.resume()
        if trainer.epoch >= cfg.epochs:
            console.print(
                f"run '{run_dir}' is already complete ({trainer.epoch}/{cfg.epochs} epochs); "
                f"--resume {run_dir} --epochs N with N > {trainer.epoch} trains it further"
            )
            return
        if not quiet:
            console.print(f"resuming '{run_dir}' after epoch {trainer.epoch}")
        trainer.fit(stop_after)
    distributed.shutdown(trainer.dist)
