"""The plugin system and typed options: names, types, failures and the disable switch."""

from __future__ import annotations

import sys
from importlib import metadata
from types import SimpleNamespace

import pytest

from energyat_core import plugins as plugins_mod
from energyat_core.errors import ConfigError
from energyat_core.registry import Registry
from energyat_core.testing import FakeEntryPoint


def test_core_components_are_registered_through_hooks(registry):
    core = next(p for p in registry.plugins if p.name == "core")
    assert core.ok, core.errors
    for item in ("attack:none", "loss:ce", "weighter:uniform", "backbone:preact_resnet18", "dataset:synthetic"):
        assert item in core.registered


def test_create_validates_and_coerces(registry):
    loss = registry.create("loss", "ce", smoothing="0.5")
    assert loss.config.smoothing == 0.5 and loss.name == "ce"


def test_unknown_component_lists_available(registry):
    with pytest.raises(ConfigError, match=r"unknown loss 'nope'.*available: .*ce"):
        registry.create("loss", "nope")


def test_unknown_component_says_to_install_a_plugin(registry):
    with pytest.raises(ConfigError, match="install the plugin that provides it"):
        registry.create("weighter", "not-installed")


def test_unknown_option_lists_valid_ones(registry):
    with pytest.raises(ConfigError, match=r"has no option 'label_smoothing'.*valid options: on, smoothing"):
        registry.create("loss", "ce", label_smoothing=0.1)


def test_wrong_type_names_expected_type(registry):
    with pytest.raises(ConfigError, match=r"option 'smoothing' expects float, got 'abc'"):
        registry.create("loss", "ce", smoothing="abc")
    with pytest.raises(ConfigError, match=r"option 'on' expects one of 'adv', 'clean'"):
        registry.create("loss", "ce", on="both")


def test_out_of_range_value_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"option 'smoothing' must be >= 0, < 1, got 1.5"):
        registry.create("loss", "ce", smoothing=1.5)


def test_unknown_kind(registry):
    with pytest.raises(ConfigError, match="unknown component kind 'attacks'"):
        registry.names("attacks")


def _fake_plugin(tmp_path, monkeypatch, name: str, source: str, dist: str | None = None, ep_name: str | None = None):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return FakeEntryPoint(ep_name or name, name, SimpleNamespace(name=dist or f"{name}-dist", version="9.9"))


def _with_entry_points(monkeypatch, eps, first_party=()):
    """Only ``eps`` and the real entry points of the ``first_party`` distributions, which count as first-party."""
    real = [ep for ep in metadata.entry_points(group="energyat") if ep.dist is not None]
    keep = [ep for ep in real if ep.dist.name in first_party]
    monkeypatch.setattr(
        plugins_mod.metadata, "entry_points", lambda group: [*keep, *eps] if group == "energyat" else []
    )
    monkeypatch.setattr(plugins_mod, "first_party_distributions", lambda: frozenset(first_party))


def test_broken_plugins_are_reported_and_skipped(tmp_path, monkeypatch):
    broken = _fake_plugin(tmp_path, monkeypatch, "broken_plug", "raise ImportError('needs libfoo')\n")
    misspelt = _fake_plugin(
        tmp_path,
        monkeypatch,
        "misspelt_plug",
        "from energyat_core import hookimpl\n@hookimpl\ndef register_atacks(register):\n    pass\n",
    )
    dup = _fake_plugin(
        tmp_path,
        monkeypatch,
        "dup_plug",
        "from energyat_core import hookimpl\nfrom energyat_core.core_plugin import CrossEntropy\n"
        "@hookimpl\ndef register_losses(register):\n"
        "    register('ce', CrossEntropy)\n    register('ce2', CrossEntropy)\n",
    )
    _with_entry_points(monkeypatch, [broken, misspelt, dup])
    reg = Registry(set())
    info = {p.name: p for p in reg.plugins}
    assert "ImportError: needs libfoo" in info["broken_plug"].errors[0]
    assert "register_atacks" in info["misspelt_plug"].errors[0]
    assert info["dup_plug"].errors == [
        "loss 'ce' is also claimed by 'core' (energyat-core, core), which keeps it; skipped in dup_plug-dist — "
        "rename it there, or uninstall one of the two"
    ]
    assert not info["broken_plug"].loaded and info["dup_plug"].loaded
    # the good part of a partly-bad plugin still loads, and core is untouched
    assert reg.get("loss", "ce2").plugin == "dup_plug"
    assert reg.get("loss", "ce").plugin == "core"


def test_disable_switch(tmp_path, monkeypatch):
    ep = _fake_plugin(
        tmp_path,
        monkeypatch,
        "noise_plug",
        "from energyat_core import hookimpl\nfrom energyat_core.core_plugin import NoAttack\n"
        "@hookimpl\ndef register_attacks(register):\n    register('noise-test', NoAttack)\n",
    )
    _with_entry_points(monkeypatch, [ep])
    assert "noise-test" in Registry(set()).names("attack")
    monkeypatch.setenv("ENERGYAT_DISABLE_PLUGINS", "noise_plug")
    reg = Registry(plugins_mod.disabled_names())
    assert "noise-test" not in reg.names("attack")
    assert next(p for p in reg.plugins if p.name == "noise_plug").disabled


def test_name_colon_value_sets_first_option(registry):
    entry, options = registry.split_spec("dataset", "imagefolder:/some/where")
    assert entry.name == "imagefolder" and options == {"path": "/some/where"}


_NOISE_TOO = (
    "from energyat_core import hookimpl\nfrom energyat_core.core_plugin import NoAttack\n"
    "@hookimpl(tryfirst={first})\ndef register_attacks(register):\n    register('noise', NoAttack)\n"
)


@pytest.mark.parametrize("name", ["aaa_plug", "zzz_plug"])
@pytest.mark.parametrize("first", [True, False])
def test_first_party_component_name_wins_whatever_the_order(tmp_path, monkeypatch, name, first):
    """The example plugin plays a first-party one; a third party also registers its ``noise``."""
    ep = _fake_plugin(tmp_path, monkeypatch, name, _NOISE_TOO.format(first=first))
    _with_entry_points(monkeypatch, [ep], first_party={"energyat-example-plugin"})
    reg = Registry(set())
    info = {p.name: p for p in reg.plugins}
    assert reg.get("attack", "noise").plugin == "example" and info["example"].ok
    assert info[name].loaded and info[name].registered == []
    (line,) = info[name].errors
    assert "attack 'noise' is also claimed by 'example' (energyat-example-plugin, first-party)" in line
    assert f"skipped in {name}-dist" in line


def test_two_third_parties_claiming_one_name_get_neither(tmp_path, monkeypatch):
    source = (
        "from energyat_core import hookimpl\nfrom energyat_core.api import Method\n"
        "from energyat_core.core_plugin import NoAttack\n"
        "@hookimpl\ndef register_attacks(register):\n    register('twin', NoAttack)\n"
        "@hookimpl\ndef register_methods(register):\n    register(Method(name='twin-at', help='h', parts={}))\n"
    )
    eps = [_fake_plugin(tmp_path, monkeypatch, n, source) for n in ("one_plug", "two_plug")]
    _with_entry_points(monkeypatch, eps)
    reg = Registry(set())
    assert "twin" not in reg.names("attack") and "twin-at" not in reg.methods
    for what, lookup in (
        ("attack 'twin'", lambda: reg.get("attack", "twin")),
        ("method 'twin-at'", lambda: reg.method("twin-at")),
    ):
        with pytest.raises(ConfigError, match="one_plug-dist.*two_plug-dist.*--disable-plugins") as err:
            lookup()
        assert str(err.value).startswith(f"{what} is claimed by 'one_plug'")
    for p in reg.plugins[1:]:
        assert len(p.errors) == 2 and all("so none of them gets it" in e for e in p.errors)


def test_entry_point_named_like_a_first_party_plugin_does_not_drop_it(tmp_path, monkeypatch):
    source = "raise AssertionError('never imported')\n"
    impostor = _fake_plugin(tmp_path, monkeypatch, "impostor", source, dist="evil-dist", ep_name="example")
    core_name = _fake_plugin(tmp_path, monkeypatch, "corelike", source, ep_name="core")
    _with_entry_points(monkeypatch, [impostor, core_name], first_party={"energyat-example-plugin"})
    reg = Registry(set())
    rows = [p for p in reg.plugins if p.name == "example"]
    assert [p.distribution for p in rows] == ["energyat-example-plugin", "evil-dist"]
    assert rows[0].ok and "noise" in reg.names("attack")
    assert not rows[1].loaded and rows[1].errors == [
        "plugin name 'example' is also claimed by 'example' (energyat-example-plugin, first-party), which keeps "
        "it; skipped in evil-dist — rename it there, or uninstall one of the two"
    ]
    fake_core = next(p for p in reg.plugins if p.distribution == "corelike-dist")
    assert "claimed by 'core' (energyat-core, core)" in fake_core.errors[0]


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("import sys\nsys.exit(3)\n", "SystemExit: the plugin called sys.exit(3)"),
        ("class Odd(BaseException):\n    pass\nraise Odd('odd')\n", "Odd: odd"),
        ("raise RuntimeError('first line\\nsecond line')\n", "RuntimeError: first line (exiting_plug.py:1)"),
    ],
)
def test_a_plugin_raising_anything_at_import_is_one_failed_row(tmp_path, monkeypatch, source, needle):
    ep = _fake_plugin(tmp_path, monkeypatch, "exiting_plug", source)
    _with_entry_points(monkeypatch, [ep], first_party={"energyat-example-plugin"})
    reg = Registry(set())
    info = next(p for p in reg.plugins if p.name == "exiting_plug")
    assert not info.loaded and len(info.errors) == 1 and needle in info.errors[0]
    assert "noise" in reg.names("attack")  # everything else loads


def test_ctrl_c_at_import_still_stops(tmp_path, monkeypatch):
    ep = _fake_plugin(tmp_path, monkeypatch, "ctrl_c_plug", "raise KeyboardInterrupt\n")
    _with_entry_points(monkeypatch, [ep])
    with pytest.raises(KeyboardInterrupt):
        Registry(set())


def test_first_party_comes_from_the_all_extra(monkeypatch):
    requires = [
        "torch>=2.1",
        'Acme_Plugin.One>=0.1; extra == "all"',
        "acme-two ; extra == 'all'",
        'x; extra == "dev"',
    ]
    monkeypatch.setattr(plugins_mod.metadata, "requires", lambda dist: requires)
    assert plugins_mod.first_party_distributions() == {"acme-plugin-one", "acme-two"}

    def missing(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(plugins_mod.metadata, "requires", missing)
    assert plugins_mod.first_party_distributions() == frozenset()  # no metadata: nobody is first-party


def test_all_extra_lists_every_plugin_distribution():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["all"]
    dists = {tomllib.loads(p.read_text())["project"]["name"] for p in root.glob("plugins/*/pyproject.toml")}
    assert set(extra) == dists
    installed = plugins_mod.first_party_distributions()
    assert installed == {plugins_mod.canonical(d) for d in dists}, "reinstall core: pip install -e ."
