"""Run configuration: parsing values, bounds, composing preset < file < flags < --set."""

from __future__ import annotations

import json

import pytest

from energyat_core.errors import ConfigError
from energyat_core.options import parse_number
from energyat_core.run_config import RunConfig, compose, parse_sets


def test_fractions_parse_without_eval():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(" 1e-3 ") == 1e-3
    with pytest.raises(ValueError):
        parse_number("__import__('os')")


def test_run_config_coerces_strings(registry):
    cfg = RunConfig.from_dict({"epochs": "3", "eps": "4/255", "milestones": "0.3,0.6", "compile": "true"}, registry)
    assert cfg.epochs == 3 and cfg.eps == pytest.approx(4 / 255)
    assert cfg.milestones == (0.3, 0.6) and cfg.compile is True


def test_run_config_rejects_bad_values(registry):
    with pytest.raises(ConfigError, match="'schedule' expects one of"):
        RunConfig.from_dict({"schedule": "linear"}, registry)
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'ten'"):
        RunConfig.from_dict({"epochs": "ten"}, registry)


@pytest.mark.parametrize(
    ("setting", "value", "rule"),
    [
        ("epochs", "0", ">= 1"),
        ("epochs", "-1", ">= 1"),
        ("lr", "-1", "> 0"),
        ("eps", "-1", ">= 0"),
        ("eval_n", "0", ">= 1"),
        ("milestones", "0.5,1.5", "<= 1"),
    ],
)
def test_bounds_come_from_the_declaration(registry, setting, value, rule):
    with pytest.raises(ConfigError, match=f"option '{setting}' must be .*{rule}.*--{setting.replace('_', '-')}="):
        compose(registry, flags={setting: value})


def test_cross_setting_rule(registry):
    with pytest.raises(ConfigError, match="L-inf radius above 1"):
        compose(registry, flags={"eps": "2"})
    assert compose(registry, flags={"eps": "2", "norm": "l2"}).eps == 2.0


def test_parse_sets():
    assert parse_sets(["attack.steps=7", "loss.smoothing=0.1"]) == {
        "attack": {"steps": "7"},
        "loss": {"smoothing": "0.1"},
    }
    with pytest.raises(ConfigError, match="KIND.OPTION=VALUE"):
        parse_sets(["steps=7"])
    with pytest.raises(ConfigError, match="unknown kind 'optim'"):
        parse_sets(["optim.lr=1"])


def test_precedence_preset_file_flags_sets(registry, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("epochs = 7\nlr = 0.5\nschedule = 'constant'\n[attack]\nscale = 0.1\n")
    cfg = compose(registry, method="noise-at", config_file=str(toml), flags={"lr": "0.02"}, sets=["attack.scale=0.2"])
    assert cfg.spec("attack") == "noise" and cfg.method == "noise-at"
    assert cfg.epochs == 7 and cfg.schedule == "constant"  # file over preset
    assert cfg.lr == 0.02  # flag over file
    assert cfg.parts["attack"].config.scale == 0.2  # --set over file


def test_based_on_extends_the_base_preset(registry):
    cfg = compose(registry, method="noise-focal")
    assert cfg.spec("attack") == "noise" and cfg.spec("weighter") == "focal"
    assert cfg.parts["weighter"].config.gamma == 1.0
    assert cfg.epochs == 2 and cfg.schedule == "cosine"  # own setting, and the base's


def test_changing_a_component_drops_the_presets_options(registry):
    cfg = compose(registry, method="noise-focal", flags={"weighter": "uniform"})
    assert cfg.spec("weighter") == "uniform" and cfg.parts["weighter"].options == {}


def test_compose_validates_component_options(registry):
    with pytest.raises(ConfigError, match="attack 'noise' has no option 'epz'"):
        compose(registry, method="noise-at", sets=["attack.epz=3"])
    with pytest.raises(ConfigError, match=r"attack 'noise' option 'scale' must be > 0.*--set attack.scale="):
        compose(registry, method="noise-at", sets=["attack.scale=-1"])
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        compose(registry, flags={"backbone": "resnet9000"})


def test_document_round_trip(registry):
    cfg = compose(registry, method="noise-focal", flags={"eps": "4/255"}, sets=["dataset.n_train=300"])
    doc = json.loads(cfg.to_json())
    assert doc["attack"] == {"name": "noise", "scale": 1.0}
    assert doc["eps"] == pytest.approx(4 / 255) and doc["norm"] == "linf" and doc["step"] is None  # the threat model
    assert doc["weighter"] == {"name": "focal", "gamma": 1.0}
    assert doc["dataset"]["name"] == "synthetic" and doc["dataset"]["n_train"] == 300
    again = RunConfig.from_dict(doc, registry)
    assert again.to_dict() == cfg.to_dict()


def test_legacy_config_json_is_read(registry):
    old = {"attack": "noise", "options": {"attack": {"scale": 0.1}}, "backbone": "small_cnn", "epochs": 2}
    cfg = RunConfig.from_dict(old, registry)
    assert cfg.parts["attack"].config.scale == 0.1 and cfg.spec("backbone") == "small_cnn"


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
