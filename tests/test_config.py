"""Run configuration: parsing values, composing preset < file < flags < --set."""

from __future__ import annotations

import pytest

from energyat_core.config import parse_number
from energyat_core.errors import ConfigError
from energyat_core.runconfig import RunConfig, compose, parse_sets


def test_fractions_parse_without_eval():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(" 1e-3 ") == 1e-3
    with pytest.raises(ValueError):
        parse_number("__import__('os')")


def test_run_config_coerces_strings():
    cfg = RunConfig.from_dict({"epochs": "3", "eps": "4/255", "milestones": "0.3,0.6", "compile": "true"})
    assert cfg.epochs == 3 and cfg.eps == pytest.approx(4 / 255)
    assert cfg.milestones == (0.3, 0.6) and cfg.compile is True


def test_run_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="'schedule' expects one of"):
        RunConfig.from_dict({"schedule": "linear"})
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'ten'"):
        RunConfig.from_dict({"epochs": "ten"})


def test_parse_sets():
    assert parse_sets(["attack.steps=7", "loss.label_smoothing=0.1"]) == {
        "attack": {"steps": "7"},
        "loss": {"label_smoothing": "0.1"},
    }
    with pytest.raises(ConfigError, match="KIND.OPTION=VALUE"):
        parse_sets(["steps=7"])
    with pytest.raises(ConfigError, match="unknown kind 'optim'"):
        parse_sets(["optim.lr=1"])


def test_precedence_preset_file_flags_sets(registry, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("epochs = 7\nlr = 0.05\n[attack]\nsteps = 3\n")
    cfg = compose(registry, method="pgd-at", config_file=str(toml), flags={"lr": "0.02"}, sets=["attack.steps=4"])
    assert cfg.attack == "pgd" and cfg.method == "pgd-at"
    assert cfg.epochs == 7  # file over preset
    assert cfg.lr == 0.02  # flag over file
    assert cfg.options["attack"]["steps"] == "4" or cfg.options["attack"]["steps"] == 4  # --set over file


def test_changing_a_component_drops_the_presets_options(registry):
    cfg = compose(registry, method="pgd-at", flags={"attack": "fgsm"})
    assert cfg.attack == "fgsm" and "attack" not in cfg.options


def test_compose_validates_component_options(registry):
    with pytest.raises(ConfigError, match="attack 'pgd' has no option 'stepz'"):
        compose(registry, method="pgd-at", sets=["attack.stepz=3"])
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        compose(registry, flags={"backbone": "resnet9000"})


def test_bad_config_file(tmp_path, registry):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        compose(registry, config_file=str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        compose(registry, config_file=str(tmp_path / "missing.toml"))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        compose(registry, config_file=str(unknown))
