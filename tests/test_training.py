"""End to end on CPU: adversarial training works, runs resume exactly, failures keep checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from energyat_core.builtins import CrossEntropy
from energyat_core.engine import Trainer
from energyat_core.errors import NonFiniteError
from energyat_core.runconfig import compose
from energyat_core.testing import QUICK_ARGS, quick_train, read_metrics, run_cli

FAST = ("--epochs", "2", "--set", "dataset.n_train=600", "--eval-n", "200")
PGD3 = ("--method", "pgd-at", "--set", "attack.steps=3")


def test_pgd_at_beats_standard_training_under_attack(tmp_path):
    std = quick_train(tmp_path / "std", "--attack", "none", "--loss", "ce")
    adv = quick_train(tmp_path / "adv", "--method", "pgd-at", "--set", "attack.steps=5")
    assert std[-1]["clean_acc"] > 0.8  # the task is learnable
    assert std[-1]["robust_acc"] < 0.3  # ...but standard training is not robust
    assert adv[-1]["robust_acc"] > std[-1]["robust_acc"] + 0.2
    # the metrics a user reads every epoch
    for key in (
        "train_loss",
        "clean_acc",
        "robust_acc",
        "energy_clean",
        "energy_adv",
        "lr",
        "img_per_s",
        "fwd_per_sample",
        "bwd_per_sample",
    ):
        assert key in adv[-1]
    # PGD-5 AT: 5 attack steps (forward+backward) + 1 training forward/backward per sample
    assert adv[-1]["fwd_per_sample"] == pytest.approx(6.0)
    assert adv[-1]["bwd_per_sample"] == pytest.approx(6.0)
    assert std[-1]["fwd_per_sample"] == pytest.approx(1.0)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    whole = quick_train(tmp_path / "whole", *PGD3, *FAST)
    part = quick_train(tmp_path / "part", *PGD3, *FAST, "--stop-after", "1")
    assert len(part) == 1
    assert run_cli("train", "--resume", tmp_path / "part", "--quiet") == 0
    resumed = read_metrics(tmp_path / "part")
    assert [m["epoch"] for m in resumed] == [1, 2]
    for a, b in zip(whole, resumed, strict=True):
        for key in ("train_loss", "clean_acc", "robust_acc", "energy_clean", "energy_adv", "lr", "step"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    w1 = load_file(tmp_path / "whole" / "model.safetensors")
    w2 = load_file(tmp_path / "part" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6)
    # resuming a finished run does nothing
    assert run_cli("train", "--resume", tmp_path / "part", "--quiet") == 0
    assert len(read_metrics(tmp_path / "part")) == 2


def test_output_directory_with_another_run_is_refused(tmp_path, capsys):
    quick_train(tmp_path / "run", *FAST)
    capsys.readouterr()
    code = run_cli("train", *QUICK_ARGS, *FAST, "--lr", "0.01", "--out", tmp_path / "run", "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and "already holds a different run" in err and "--overwrite" in err
    assert len(read_metrics(tmp_path / "run")) == 2  # nothing of the old run was touched
    quick_train(tmp_path / "run", *FAST, "--lr", "0.01", "--overwrite")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.01


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, registry, monkeypatch):
    cfg = compose(
        registry,
        flags={"backbone": "small_cnn", "epochs": 3, "device": "cpu", "eval_n": 50, "eval_steps": 1},
        sets=["dataset.n_train=256", "dataset.n_test=50"],
    )
    trainer = Trainer(cfg, tmp_path / "run", registry, quiet=True)
    trainer.fit(stop_after=1)
    good = load_file(tmp_path / "run" / "model.safetensors")
    calls = {"n": 0}
    original = CrossEntropy.__call__

    def poisoned(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        return out * float("nan") if calls["n"] > 1 else out

    monkeypatch.setattr(CrossEntropy, "__call__", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite at epoch 2.*last good checkpoint \\(epoch 1\\)"):
        trainer.fit()
    kept = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert len(read_metrics(tmp_path / "run")) == 1


def test_bn_mode_during_attack_is_an_option(tmp_path, registry):
    cfg = compose(registry, method="pgd-at", flags={"attack_bn": "train"})
    assert cfg.attack_bn == "train"
