"""The ``energyat`` command line (Typer).

Core commands live in the modules of this package; plugins add their own through the
``register_commands(app)`` hook. Every :class:`~energyat_core.errors.EnergyATError` ends
the program with one line ``error: <problem> — <fix>`` and exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from energyat_core.errors import EnergyATError
from energyat_core.registry import disabled_for_command

DISABLE_FLAG = "--disable-plugins"


def _disable_from_argv(argv: list[str]) -> str | None:
    """Read ``--disable-plugins a,b`` early: plugins must be known before the CLI is built."""
    for i, arg in enumerate(argv):
        if arg == DISABLE_FLAG and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(DISABLE_FLAG + "="):
            return arg.split("=", 1)[1]
    return None


def build_app(disable: str | None = None) -> typer.Typer:
    """The Typer app with core commands and every plugin's commands."""
    from energyat_core.cli import evaluate, info, plot, train
    from energyat_core.plugins import call_per_plugin
    from energyat_core.registry import get_registry

    app = typer.Typer(
        name="energyat",
        help="Adversarial training seen through energy-based models: train, evaluate, compose methods from plugins.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        disable_plugins: str = typer.Option(
            None,
            DISABLE_FLAG,
            help="Comma-separated plugins (entry-point or distribution names) not to load; "
            "also ENERGYAT_DISABLE_PLUGINS.",
        ),
    ) -> None:
        """energyat: adversarial training seen through energy-based models."""

    info.add_commands(app)
    train.add_commands(app)
    evaluate.add_commands(app)
    plot.add_commands(app)
    registry = get_registry(disable)
    call_per_plugin(registry.pm, "register_commands", registry.plugins, lambda _info: {"app": app})
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``energyat`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    try:
        disable = _disable_from_argv(argv)
        with disabled_for_command(disable):
            app = build_app(disable)
            app(args=argv, prog_name="energyat", standalone_mode=True)
    except EnergyATError as e:
        err.print(f"[bold red]error:[/] {escape(e.line())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; a run can continue with `energyat train --resume RUN_DIR`")
        sys.exit(130)
