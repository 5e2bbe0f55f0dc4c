"""The Python API (docs/python.md) with core's components and the example plugin's attack ``noise``."""

from __future__ import annotations

import json

import pytest
import torch

import energyat_core as ea
from energyat_core.api import ConfigError, ThreatModel
from energyat_core.testing import TINY_ARGS, run_cli

TINY = dict(
    backbone="small_cnn",
    dataset={"name": "synthetic", "n_train": 64, "n_test": 32},
    epochs=1,
    batch_size=32,
    eval_n=32,
    eval_steps=1,
    device="cpu",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return ea.train(attack="noise", out=tmp_path_factory.mktemp("api") / "run", **TINY)


def test_train_returns_the_run_the_cli_would_write(trained):
    assert trained.dir.is_dir() and (trained.dir / "model.safetensors").is_file()
    assert [m["epoch"] for m in trained.metrics] == [1]
    doc = json.loads((trained.dir / "config.json").read_text())
    assert doc["attack"]["name"] == "noise" and doc["epochs"] == 1 and doc["eps"] == pytest.approx(8 / 255)
    assert not trained.model.training


def test_load_gives_a_plain_module_with_the_trained_weights(trained):
    model = ea.load(trained.dir)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(model(x), trained.model(x), atol=1e-6)
    with pytest.raises(ConfigError, match="needs its backbone"):
        ea.load(trained.dir / "model.safetensors")


def test_a_third_party_attack_through_the_api(trained):
    x, y = torch.rand(16, 3, 32, 32), torch.zeros(16, dtype=torch.long)
    fn = ea.attack("noise", trained.model, eps=4 / 255, scale=0.5)
    assert fn.threat == ThreatModel(4 / 255, "linf", None)
    delta = fn(x, y) - x
    assert 1.5 / 255 < delta.abs().max().item() <= 2 / 255 + 1e-6  # half of the radius, as the option says
    with pytest.raises(ConfigError, match="option 'scale' must be > 0, <= 1"):
        ea.attack("noise", trained.model, scale=3)
    with pytest.raises(ConfigError, match="does not support the run's norm l2"):
        ea.attack("noise", trained.model, norm="l2")


def test_evaluate_with_an_attack_is_the_worst_case_report(trained):
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    report = ea.evaluate(trained.model, (x, y), evaluators=["pgd:2"], attacks=[("noise", {"scale": 1.0})])
    assert set(report["attacks"]) == {"pgd2-ce", "pgd2-cw", "noise"}
    assert report["robust_acc"] <= min(report["attacks"].values()) <= report["clean_acc"]
    assert report["eps"] == "8/255" and report["n_examples"] == 32


def test_eval_attack_flag_runs_any_attack(tmp_path, cli):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--out", run) == 0
    code, out, err = cli("eval", run, "--attack", "noise", "--set", "attack.scale=0.5", "--device", "cpu")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert set(result["attacks"]) == {"noise"} and result["evaluators"]["noise"]["scale"] == 0.5
    code, _, err = cli("eval", run, "--attack", "noise", "--set", "attack.steps=3", "--device", "cpu")
    assert code == 2 and "no attack run here has an option 'steps'" in err
