"""CLI manners: --version, -h, clean help text, shell completion, and install hints from the catalog.

Core tests name no first-party plugin: the plugin a hint is about is taken from the catalog
itself, and a test skips when that plugin is not installed here.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import pytest
import typer

from energyat_core import __version__, catalog
from energyat_core.errors import ConfigError
from energyat_core.kinds import KIND
from energyat_core.options import display_value, plain_text
from energyat_core.plugins import canonical

ROOT = Path(__file__).resolve().parent.parent


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _catalog_item(kinds) -> tuple[str, str, str]:
    """(distribution, kind, name) of an installed first-party plugin's name of one of ``kinds``."""
    for dist, provides in sorted(catalog.load().items()):
        for kind in kinds:
            if provides.get(kind) and _installed(dist):
                return dist, kind, provides[kind][0]
    pytest.skip("no first-party plugin providing such a name is installed")


def _commands() -> list[str]:
    from energyat_core.cli import build_app

    return sorted(typer.main.get_command(build_app()).commands)  # type: ignore[attr-defined]


def test_version_prints_core_and_every_loaded_plugin(cli):
    from energyat_core.registry import get_registry

    code, out, _ = cli("--version")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"energyat {__version__}"
    for p in get_registry().plugins:
        if p.loaded and p.name != "core":
            assert f"{p.distribution} {p.version} (plugin {p.name})" in lines


def test_h_is_help_on_the_root_and_on_every_command(cli):
    code, short, _ = cli("-h")
    assert code == 0 and "Usage: energyat" in short
    assert cli("--help")[1] == short
    code, train_help, _ = cli("train", "-h")
    assert code == 0 and "Usage: energyat train" in train_help and "--config" in train_help
    for name in _commands():
        code, out, err = cli(name, "-h")
        assert code == 0 and f"Usage: energyat {name}" in out, (name, err)


def test_help_and_describe_have_no_markup_artefacts_and_show_radii_as_fractions(cli, monkeypatch):
    texts = [cli("-h")[1]] + [cli(name, "-h")[1] for name in _commands()]
    texts += [cli("describe", "run")[1], cli("describe", "method")[1]]
    texts += [cli("describe", kind)[1] for kind in KIND]
    for text in texts:
        for artefact in ("\\[", "[bold", "[/", "``", ":class:"):
            assert artefact not in text, (artefact, text)
    assert "8/255" in cli("train", "-h")[1]
    assert "8/255" in cli("describe", "run")[1]
    assert "0.0313" not in cli("describe", "run")[1]


def test_help_text_is_shown_as_written(cli, monkeypatch):
    """Brackets stay (Rich would swallow ``[attack]``), reStructuredText code reads as `x`."""
    from energyat_core.cli import info

    add = info.add_commands

    def with_one_more(app):
        add(app)

        @app.command("bracketed")
        def bracketed(
            level: int = typer.Option(0, help="a number in [0, 1]; [bold]not bold[/bold], ``level``"),
        ) -> None:
            """Read one [attack] table and ``x`` from :class:`~pkg.Thing`."""

    monkeypatch.setattr(info, "add_commands", with_one_more)
    code, out, _ = cli("bracketed", "-h")
    assert code == 0
    flat = " ".join(out.split())
    assert "Read one [attack] table and `x` from `pkg.Thing`." in flat
    assert "[0, 1]" in flat and "[bold]not bold[/bold]" in flat and "`level`" in flat


def test_display_helpers():
    assert display_value(8 / 255) == "8/255" and display_value(2 / 255) == "2/255"
    assert display_value(12 / 255) == "12/255"
    assert display_value(0.2) == "0.2" and display_value(1.0) == "1.0" and display_value(0.5) == "0.5"
    assert display_value((4 / 255,)) == "(4/255,)" and display_value([0.5, 0.75]) == "[0.5, 0.75]"
    assert display_value("linf") == "'linf'" and display_value(None) == "None" and display_value(10) == "10"
    assert plain_text("``a`` and :func:`~m.f` and `b`") == "`a` and `m.f` and `b`"


def test_shell_completion_is_offered(cli):
    out = cli("-h")[1]
    assert "--install-completion" in out and "--show-completion" in out
    code, script, _ = cli("--show-completion", "bash")
    assert code == 0 and "energyat" in script and "complete" in script


def test_unknown_component_of_a_disabled_first_party_plugin_names_it(cli):
    dist, kind, name = _catalog_item([k for k in KIND])
    line = _one_line_error(*cli("--disable-plugins", dist, "describe", kind, name)[::2])
    assert f"{kind} '{name}' is provided by {dist}, which is disabled for this command" in line


def test_unknown_command_of_a_disabled_first_party_plugin_names_it(cli):
    dist, _, name = _catalog_item([catalog.COMMANDS])
    code, _, err = cli("--disable-plugins", dist, name, "-h")
    line = _one_line_error(code, err)
    assert f"command '{name}' is provided by {dist}" in line and "No such command" not in err
    code, _, err = cli("no-such-command-here")
    assert code == 2 and "No such command" in err  # a name no plugin provides keeps click's message


def test_a_missing_first_party_plugin_gets_a_working_install_command(monkeypatch):
    """Not installed at all (its entry points gone): the hint is the one install command of catalog.py."""
    from energyat_core import plugins
    from energyat_core.registry import Registry

    dist, kind, name = _catalog_item([k for k in KIND])
    every = plugins.metadata.entry_points

    def without(**kw):
        return [ep for ep in every(**kw) if ep.dist is None or canonical(ep.dist.name) != dist]

    monkeypatch.setattr(plugins.metadata, "entry_points", without)
    with pytest.raises(ConfigError) as e:
        Registry(set()).get(kind, name)
    text = str(e.value.problem) + " " + str(e.value.fix)
    assert f"is provided by {dist}, which is not installed" in text
    assert catalog.install_command(dist) in text
    assert "make wheels" in catalog.install_command(dist)  # this is a checkout
    assert f"--find-links dist {dist}" in catalog.install_command(dist)


def test_plugins_prints_load_errors_whole(cli, monkeypatch):
    from energyat_core.cli import info
    from energyat_core.registry import Registry

    registry = Registry(set())
    long_error = "ImportError: " + "a very long reason " * 12 + "(plugin.py:1)"
    registry.plugins[0].errors.append(long_error)
    monkeypatch.setattr(info, "get_registry", lambda: registry)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli("plugins")
    assert code == 0
    assert any(long_error in line for line in out.splitlines()), out


def test_catalog_is_generated_from_the_current_plugins():
    dists = [d for d in catalog.load()]
    assert dists, "energyat_core/catalog.json is missing or empty"
    spec = importlib.util.spec_from_file_location("gen_catalog", ROOT / "scripts" / "gen_catalog.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    missing = [d for d in gen.distributions() if not _installed(d)]
    if missing:
        pytest.skip(f"not every first-party plugin is installed here ({len(missing)} missing)")
    text = (ROOT / "energyat_core" / "catalog.json").read_text()
    assert text == gen.render(), "run `python scripts/gen_catalog.py`"
