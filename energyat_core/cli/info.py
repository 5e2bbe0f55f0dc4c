"""``energyat plugins`` and ``energyat describe``: what is installed and what it takes."""

from __future__ import annotations

import inspect

import typer
from rich.console import Console
from rich.markup import escape

from energyat_core.errors import ConfigError
from energyat_core.kinds import KIND, kind_names
from energyat_core.options import describe_fields, display_value, plain_text
from energyat_core.progress import table
from energyat_core.registry import get_registry
from energyat_core.run_config import RunConfig


def _plain(rows):
    """Help texts may contain brackets ([0, 1]) that rich would read as markup."""
    return [tuple(escape(str(c)) for c in row) for row in rows]


def add_commands(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
    app.command("describe")(describe)


def plugins() -> None:
    """List installed plugins: distribution, version, what each registers, load errors.

    The table says ``ok``, ``disabled``, ``failed`` (not loaded) or ``N skipped`` (loaded, some
    registrations refused); every error follows the table whole, one line each, so that no
    terminal width cuts it.
    """
    registry = get_registry()
    console = Console()
    rows = []
    for p in registry.plugins:
        rows.append((p.name, p.distribution, p.version, _grouped(p.registered), _status(p)))
    listing = table("energyat plugins", ["plugin", "distribution", "version", "registers", "status"], rows)
    for column in listing.columns[:2]:  # names stay whole (and greppable)
        column.no_wrap = True
    listing.columns[4].min_width = 9
    console.print(listing)
    for p in registry.plugins:
        for error in p.errors:
            console.print(f"[red]{escape(p.name)}[/] ({escape(p.distribution)}): {escape(error)}", soft_wrap=True)


def _status(p) -> str:
    if p.disabled:
        return "disabled"
    if not p.loaded:
        return "[red]failed[/]"
    if p.errors:
        return f"[yellow]{len(p.errors)} skipped[/]"
    return "[green]ok[/]"


def _grouped(registered: list[str]) -> str:
    """``['attack:pgd', 'attack:fgsm', 'method:pgd-at']`` -> ``'attack: pgd, fgsm\nmethod: pgd-at'``."""
    kinds: dict[str, list[str]] = {}
    for item in registered:
        kind, _, name = item.partition(":")
        kinds.setdefault(kind, []).append(name)
    return "\n".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items()) or "-"


def describe(
    kind: str = typer.Argument(..., help=f"Component kind ({kind_names()}), 'method', or 'run'."),
    name: str = typer.Argument(None, help="Component or method name; leave out to list the names of KIND."),
) -> None:
    """Show a component's options (type, default, help), a method preset, or the run settings."""
    registry = get_registry()
    console = Console()
    if kind == "run":
        console.print(
            table(
                "run settings (flags of `energyat train`)",
                ["setting", "type", "default", "help"],
                _plain(describe_fields(RunConfig)),
            )
        )
        return
    if kind == "method":
        if name is None:
            rows = [(m.name, registry.method_plugin[m.name], plain_text(m.help)) for m in registry.methods.values()]
            console.print(table("methods", ["method", "plugin", "description"], _plain(rows)))
            return
        m = registry.method(name)
        based = registry.methods[name].based_on
        if based:
            console.print(f"based on method '{based}'")
        rows = [
            (k, n, ", ".join(f"{a}={display_value(b)}" for a, b in o.items()) or "-") for k, (n, o) in m.parts.items()
        ]
        rows += [("run", k, display_value(v)) for k, v in m.settings.items()]
        title = escape(f"method '{m.name}': {plain_text(m.help)}")
        console.print(table(title, ["part", "name / setting", "options / value"], _plain(rows)))
        if m.reference:
            console.print(f"reference: {escape(m.reference)}")
        command = m.reproduce_command()
        if command:
            console.print(f"reference backbone: {m.reference_backbone}; to reproduce: {escape(command)}")
        return
    if kind not in KIND:
        raise ConfigError(f"unknown component kind '{kind}'", f"use one of: {kind_names('method', 'run')}")
    if name is None:
        rows = [
            (e.name, e.plugin, plain_text(e.summary)) for e in (registry.get(kind, n) for n in registry.names(kind))
        ]
        console.print(table(f"{kind}s", ["name", "plugin", "description"], _plain(rows)))
        return
    entry = registry.get(kind, name)
    console.print(f"[bold]{escape(kind)} '{escape(entry.name)}'[/] (plugin {escape(entry.plugin)})")
    doc = (entry.cls.__doc__ or "").strip()
    if doc:
        console.print(escape(plain_text(inspect.cleandoc(doc))))
    fields = _plain(describe_fields(entry.cls.Config))
    if fields:
        console.print(table("options (--set " + kind + ".NAME=VALUE)", ["option", "type", "default", "help"], fields))
    else:
        console.print("no options")
