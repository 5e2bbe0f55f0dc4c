"""The ``energyat`` command line (Typer).

Core commands live in the modules of this package; plugins add their own through the
``register_commands(app)`` hook.

:func:`main` is the one error boundary: a command ends with its result or with one line
``error: <problem> — <fix>`` and exit code 2, whatever it raised
(:func:`~energyat_core.errors.as_user_error` translates OS, JSON, PIL and other errors).
``energyat --debug COMMAND`` or ``ENERGYAT_DEBUG=1`` lets the exception through, with its
traceback. Usage errors keep click's own message; Ctrl-C keeps its own line.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from energyat_core.errors import ConfigError, as_user_error
from energyat_core.options import plain_text
from energyat_core.registry import disabled_for_command

DISABLE_FLAG = "--disable-plugins"
DEBUG_FLAG = "--debug"
DEBUG_ENV = "ENERGYAT_DEBUG"
HELP_OPTIONS = ["-h", "--help"]


def _disable_from_argv(argv: list[str]) -> str | None:
    """Read ``--disable-plugins a,b`` early: plugins must be known before the CLI is built."""
    for i, arg in enumerate(argv):
        if arg == DISABLE_FLAG and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(DISABLE_FLAG + "="):
            return arg.split("=", 1)[1]
    return None


def _debug(argv: list[str]) -> bool:
    """``--debug`` among the root options (before the command), or ``ENERGYAT_DEBUG=1``."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == DEBUG_FLAG:
            return True
        i += 2 if argv[i] == DISABLE_FLAG else 1
    return False


def _decompression_bombs_are_errors() -> None:
    """PIL only warns about an image between 1x and 2x its pixel limit; make that an error too."""
    try:
        from PIL import Image
    except ImportError:
        return
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def _print_version(value: bool) -> None:
    """``energyat --version``: core's version, then one line per loaded plugin."""
    if not value:
        return
    from energyat_core import __version__
    from energyat_core.registry import get_registry

    print(f"energyat {__version__}")
    for p in get_registry().plugins:
        if p.loaded and p.name != "core":
            print(f"{p.distribution} {p.version} (plugin {p.name})")
    raise typer.Exit()


def _clean(text: str | None) -> str | None:
    """Help text as written, for Rich: ``x`` (reStructuredText) as `x`, brackets not read as markup."""
    return None if text is None else escape(plain_text(text))


def _subcommands(command: Any) -> dict[str, Any]:
    """The subcommands of a group (Typer's command classes are click's or its own copy of them)."""
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else {}


def clean_help(command: Any) -> Any:
    """Make every help text of ``command`` and its subcommands plain (core's and plugins' alike)."""
    command.help = _clean(command.help)
    command.short_help = _clean(command.short_help)
    for param in command.params:
        if isinstance(getattr(param, "help", None), str):
            param.help = _clean(param.help)
    for sub in _subcommands(command).values():
        clean_help(sub)
    return command


def _command_name(argv: list[str]) -> str | None:
    """The command of ``argv`` (the first word after the root options), if any."""
    i = 0
    while i < len(argv):
        if argv[i] == DISABLE_FLAG:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return argv[i]
    return None


def _check_command(command: Any, argv: list[str]) -> None:
    """A command that an absent first-party plugin adds: say which one to install (click says "No such command")."""
    from energyat_core import catalog
    from energyat_core.registry import get_registry

    name = _command_name(argv)
    if name is None or not _subcommands(command) or name in _subcommands(command):
        return
    hint = catalog.missing_hint(catalog.COMMANDS, name, get_registry().plugins)
    if hint is not None:
        raise ConfigError(*hint)


def build_app(disable: str | None = None) -> typer.Typer:
    """The Typer app with core commands and every plugin's commands."""
    from energyat_core.cli import evaluate, export, info, new_plugin, plot, train
    from energyat_core.plugins import call_per_plugin
    from energyat_core.registry import get_registry

    app = typer.Typer(
        name="energyat",
        help="Adversarial training seen through energy-based models: train, evaluate, compose methods from plugins.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        context_settings={"help_option_names": HELP_OPTIONS},
    )

    @app.callback()
    def _root(
        disable_plugins: str = typer.Option(
            None,
            DISABLE_FLAG,
            help="Comma-separated plugins (entry-point or distribution names) not to load; "
            "also ENERGYAT_DISABLE_PLUGINS.",
        ),
        debug: bool = typer.Option(
            False,
            DEBUG_FLAG,
            help=f"Show the traceback of an error instead of one line (for bug reports); also {DEBUG_ENV}=1.",
        ),
        version: bool = typer.Option(
            False,
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of energyat and of every loaded plugin, and exit.",
        ),
    ) -> None:
        """energyat: adversarial training seen through energy-based models."""

    info.add_commands(app)
    train.add_commands(app)
    evaluate.add_commands(app)
    export.add_commands(app)
    plot.add_commands(app)
    new_plugin.add_commands(app)
    registry = get_registry(disable)
    call_per_plugin(registry.pm, "register_commands", registry.plugins, lambda _info: {"app": app})
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``energyat`` console script, and the CLI's one error boundary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    debug = _debug(argv)
    try:
        with warnings.catch_warnings():
            _decompression_bombs_are_errors()
            disable = _disable_from_argv(argv)
            with disabled_for_command(disable):
                command = clean_help(typer.main.get_command(build_app(disable)))
                _check_command(command, argv)
                command.main(args=argv, prog_name="energyat", standalone_mode=True)
    except KeyboardInterrupt:
        err.print(
            "interrupted; a run that wrote a checkpoint continues with `energyat train --resume RUN_DIR` "
            "(an --overwrite stopped before its first checkpoint left the old run as it was)"
        )
        sys.exit(130)
    except SystemExit:  # click's own exits: --help, usage errors, a command's exit code
        raise
    except BaseException as e:  # noqa: BLE001 - the one boundary: every other error is one line
        if debug:
            raise
        line = " ".join(as_user_error(e).line().splitlines())
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        sys.exit(2)
