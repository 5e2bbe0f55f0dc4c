"""Write energyat_core/catalog.json: what each first-party plugin provides.

Run ``python scripts/gen_catalog.py`` in the development environment (every plugin of
``plugins/`` installed); ``tests/test_cli_manners.py`` fails when the file is stale. The
distribution names come from ``plugins/*/pyproject.toml``; the names each registers (every
kind, method presets, and the commands of ``register_commands``) from loading them through
a :class:`~energyat_core.registry.Registry`. Core's hints for a missing plugin read it
(:mod:`energyat_core.catalog`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tomllib
import typer

from energyat_core.catalog import COMMANDS
from energyat_core.plugins import call_per_plugin, canonical
from energyat_core.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "energyat_core" / "catalog.json"


def distributions() -> list[str]:
    """The canonical distribution names of the first-party plugins of this checkout."""
    names = []
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        names.append(canonical(tomllib.loads(pyproject.read_text())["project"]["name"]))
    return names


def _commands(registry: Registry) -> dict[str, list[str]]:
    """Plugin name -> the commands its ``register_commands`` adds (each plugin gets its own app)."""
    apps: dict[str, typer.Typer] = {}
    call_per_plugin(
        registry.pm, "register_commands", registry.plugins, lambda i: {"app": apps.setdefault(i.name, typer.Typer())}
    )
    out = {}
    for plugin, app in apps.items():
        names = [c.name or c.callback.__name__.lower().replace("_", "-") for c in app.registered_commands if c.callback]
        names += [g.name or g.typer_instance.info.name for g in app.registered_groups]
        out[plugin] = [n for n in names if isinstance(n, str)]
    return out


def catalog() -> dict:
    dists = distributions()
    registry = Registry(set())
    commands = _commands(registry)
    provides: dict[str, dict[str, list[str]]] = {d: {} for d in dists}
    missing = set(dists)
    for info in registry.plugins:
        dist = canonical(info.distribution)
        if dist not in provides:
            continue
        missing.discard(dist)
        if not info.loaded:
            raise SystemExit(f"plugin {info.name} ({dist}) did not load: {info.errors}")
        for item in info.registered:
            kind, _, name = item.partition(":")
            provides[dist].setdefault(kind, []).append(name)
        if commands.get(info.name):
            provides[dist].setdefault(COMMANDS, []).extend(commands[info.name])
    if missing:
        raise SystemExit(f"not installed here: {', '.join(sorted(missing))} (run in the development environment)")
    for names in provides.values():
        for kind in names:
            names[kind] = sorted(set(names[kind]))
    return {
        "generated_by": "scripts/gen_catalog.py",
        "distributions": {d: dict(sorted(p.items())) for d, p in sorted(provides.items())},
    }


def render() -> str:
    return json.dumps(catalog(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
