"""The plugin system and typed options: names, types, failures and the disable switch."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from energyat_core import plugins as plugins_mod
from energyat_core.errors import ConfigError
from energyat_core.registry import Registry


def test_core_components_are_registered_through_hooks(registry):
    core = next(p for p in registry.plugins if p.name == "core")
    assert core.ok, core.errors
    for item in ("attack:none", "loss:ce", "weighter:uniform", "backbone:preact_resnet18", "dataset:synthetic"):
        assert item in core.registered


def test_create_validates_and_coerces(registry):
    loss = registry.create("loss", "ce", label_smoothing="0.5")
    assert loss.config.label_smoothing == 0.5 and loss.name == "ce"


def test_unknown_component_lists_available(registry):
    with pytest.raises(ConfigError, match=r"unknown loss 'nope'.*available: .*ce"):
        registry.create("loss", "nope")


def test_unknown_component_says_to_install_a_plugin(registry):
    with pytest.raises(ConfigError, match="install the plugin that provides it"):
        registry.create("weighter", "not-installed")


def test_unknown_option_lists_valid_ones(registry):
    with pytest.raises(ConfigError, match=r"has no option 'smoothing'.*valid options: on, label_smoothing"):
        registry.create("loss", "ce", smoothing=0.1)


def test_wrong_type_names_expected_type(registry):
    with pytest.raises(ConfigError, match=r"option 'label_smoothing' expects float, got 'abc'"):
        registry.create("loss", "ce", label_smoothing="abc")
    with pytest.raises(ConfigError, match=r"option 'on' expects one of 'adv', 'clean'"):
        registry.create("loss", "ce", on="both")


def test_out_of_range_value_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"option 'label_smoothing' must be >= 0, < 1, got 1.5"):
        registry.create("loss", "ce", label_smoothing=1.5)


def test_unknown_kind(registry):
    with pytest.raises(ConfigError, match="unknown component kind 'attacks'"):
        registry.names("attacks")


def _fake_plugin(tmp_path, monkeypatch, name: str, source: str) -> metadata.EntryPoint:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return metadata.EntryPoint(name=name, value=name, group="energyat")


def _with_entry_points(monkeypatch, eps):
    monkeypatch.setattr(plugins_mod.metadata, "entry_points", lambda group: list(eps) if group == "energyat" else [])


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
    assert any("'ce' is already registered by 'core'" in e for e in info["dup_plug"].errors)
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
