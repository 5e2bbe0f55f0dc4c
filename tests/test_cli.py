"""The command line: listing, describing, evaluating, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from energyat_core.testing import QUICK_ARGS, quick_train

FAST = ("--epochs", "1", "--set", "dataset.n_train=400", "--eval-n", "100")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    quick_train(run, "--method", "noise-at", *FAST)
    return run


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_plugins_lists_distributions(cli):
    code, out, _ = cli("plugins")
    assert code == 0
    assert "energyat-core" in out and "energyat-example-plugin" in out and "attack: noise" in out


def test_describe_shows_options(cli):
    code, out, _ = cli("describe", "attack", "noise")
    assert code == 0 and "eps" in out and "> 0, <= 1" in out
    code, out, _ = cli("describe", "method", "noise-focal")
    assert code == 0 and "based on method 'noise-at'" in out and "focal" in out and "noise" in out
    code, out, _ = cli("describe", "run")
    assert code == 0 and "schedule" in out


def test_help_explains_every_flag(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0
    for flag in ("--method", "--attack", "--set", "--config", "--schedule", "--resume", "--compile", "--precision"):
        assert flag in out
    from energyat_core.kinds import RUN_KINDS
    from energyat_core.run_config import setting_fields

    for kind in RUN_KINDS:  # every run kind and every setting has its flag, derived from the declarations
        assert kind.flag in out
    for f in setting_fields():
        assert "--" + f.name.replace("_", "-") in out


def test_eval_run_dir_needs_no_flags(cli, trained):
    code, out, err = cli("eval", trained, "--n", "100", "--set", "evaluator.steps=3")
    assert code == 0, err
    result = json.loads((trained / "eval.json").read_text())
    for key in ("clean_acc", "robust_acc", "eps", "threat_model", "dataset", "architecture", "n_examples", "attacks"):
        assert key in result
    assert result["eps"] == "8/255" and result["threat_model"] == "Linf" and result["n_examples"] == 100
    assert set(result["attacks"]) == {"pgd3-ce", "pgd3-cw"}
    assert result["robust_acc"] <= min(result["attacks"].values()) <= result["clean_acc"]


def test_eval_plain_state_dict(cli, trained, tmp_path):
    from safetensors.torch import load_file

    state = {
        k.removeprefix("net."): v for k, v in load_file(trained / "model.safetensors").items() if k.startswith("net.")
    }
    save_file(state, tmp_path / "plain.safetensors")
    code, out, err = cli(
        "eval",
        "--weights",
        tmp_path / "plain.safetensors",
        "--backbone",
        "small_cnn",
        "--dataset",
        "synthetic",
        "--n",
        "50",
        "--set",
        "evaluator.pgd.steps=2",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "plain.eval.json").read_text())["n_examples"] == 50


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--attack", "noize"), ("unknown attack 'noize'", "available:")),
        (("--method", "nope"), ("unknown method 'nope'",)),
        (("--set", "attack.epz=3", "--attack", "noise"), ("has no option 'epz'", "valid options")),
        (("--set", "attack.scale=many", "--attack", "noise"), ("expects float, got 'many'",)),
        (("--set", "attack.scale=2", "--attack", "noise"), ("option 'scale' must be > 0, <= 1", "--set attack.scale=")),
        (("--attack", "noise", "--norm", "l2"), ("attack 'noise' does not support the run's norm l2", "--norm linf")),
        (("--eps", "2"), ("L-inf radius above 1",)),
        (("--epochs", "0"), ("option 'epochs' must be >= 1", "--epochs=")),
        (("--lr", "-1"), ("option 'lr' must be > 0",)),
        (("--epochs", "1", "--dataset", "imagefolder:/no/such/folder"), ("does not exist",)),
        (("--device", "cuda"), ("no CUDA GPU",)) if not torch.cuda.is_available() else (("--attack", "x"), ("x",)),
    ],
)
def test_bad_training_input_is_one_line(cli, tmp_path, args, needles):
    base = ("--backbone", "small_cnn") if "--dataset" in args else QUICK_ARGS  # QUICK_ARGS sets synthetic's options
    code, _, err = cli("train", *base, *args, "--out", tmp_path / "r", "--quiet")
    _one_line_error(code, err, *needles)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--batch-size", "0"), ("--batch-size must be >= 1, got 0", "e.g. --batch-size 256")),
        (("--n", "-5"), ("--n must be >= 0, got -5",)),
        (("--eps", "2"), ("--eps must be in [0, 1] for --norm linf, got '2'",)),
        (("--eps", "-1", "--norm", "l2"), ("--eps must be >= 0, got '-1'",)),
        (("--eps", "lots"), ("--eps expects a number, got 'lots'",)),
    ],
)
def test_bad_eval_numbers_are_one_line(cli, trained, tmp_path, args, needles):
    code, _, err = cli("eval", trained, *args, "--out", tmp_path / "eval.json")
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "eval.json").exists()


def test_bad_checkpoints_are_one_line(cli, trained, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes((trained / "model.safetensors").read_bytes()[:1000])
    code, _, err = cli("eval", "--weights", bad, "--backbone", "small_cnn", "--dataset", "synthetic")
    _one_line_error(code, err, "not a readable safetensors file")
    code, _, err = cli(
        "eval",
        "--weights",
        trained / "model.safetensors",
        "--backbone",
        "preact_resnet18",
        "--dataset",
        "synthetic",
        "--n",
        "10",
    )
    _one_line_error(code, err, "does not fit this architecture")
    code, _, err = cli("eval", tmp_path / "missing-run")
    _one_line_error(code, err, "does not exist")


def test_example_third_party_plugin_is_listed_and_trains(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table unwrapped
    code, out, _ = cli("plugins")
    assert "energyat-example-plugin" in out and "attack: noise" in out and "weighter: focal" in out
    metrics = quick_train(tmp_path / "ex", "--attack", "noise", "--weighter", "focal", *FAST)
    assert json.loads((tmp_path / "ex" / "config.json").read_text())["attack"]["name"] == "noise"
    assert metrics[-1]["fwd_per_sample"] == pytest.approx(1.0)  # the noise attack makes no forward pass


def test_disable_plugins_flag(cli):
    code, out, _ = cli("--disable-plugins", "example", "plugins")
    assert code == 0 and "disabled" in out
