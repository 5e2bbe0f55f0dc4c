"""End to end on CPU: adversarial training works, runs resume exactly, failures keep checkpoints.

Core's tests use core's components and the example plugin only; the adversarial attack here
is core's PGD (the one of the per-epoch evaluation) in a test-local component.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from energyat_core.api import Attack, default_step, pgd
from energyat_core.core_plugin import CrossEntropy
from energyat_core.errors import NonFiniteError
from energyat_core.run_config import compose
from energyat_core.testing import (
    QUICK_ARGS,
    QUICK_FLAGS,
    QUICK_SETS,
    compose_config,
    make_trainer,
    quick_train,
    read_metrics,
    run_cli,
    train_steps,
)
from energyat_core.trainer import Trainer

FAST = ("--epochs", "2", "--set", "dataset.n_train=600", "--eval-n", "200")
NOISE = ("--method", "noise-at")  # the example plugin's random attack: a resume must restore the RNGs


class CorePGD(Attack):
    """PGD-K in the 8/255 L-inf ball with core's :func:`pgd`; records the model's mode at each call."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.modes: list[bool] = []

    def perturb(self, model, x, y):
        self.modes.append(model.training)
        eps = 8 / 255
        return pgd(model, x, y, eps=eps, alpha=default_step(eps, self.steps), steps=self.steps)


def _fit(run_dir, registry, attack=None, **flags):
    """Train the quick setting (``attack`` replacing the config's) through the Trainer; the metrics."""
    cfg = compose_config(registry, flags={**QUICK_FLAGS, **flags}, sets=list(QUICK_SETS))
    trainer = make_trainer(cfg, run_dir, registry)
    if attack is not None:
        trainer.components["attack"] = attack
    return trainer.fit()


def test_adversarial_training_beats_standard_training_under_attack(tmp_path, registry):
    std = _fit(tmp_path / "std", registry)  # the default parts: attack none, loss ce, weighter uniform
    adv = _fit(tmp_path / "adv", registry, CorePGD(steps=5))
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
        "train_energy_clean",
        "train_energy_clean_std",
        "train_energy_adv",
        "train_energy_adv_std",
        "lr",
        "img_per_s",
        "fwd_per_sample",
        "bwd_per_sample",
    ):
        assert key in adv[-1]
    # PGD-5 AT: 5 attack steps (forward+backward) + 1 training forward/backward per sample (the
    # forward that measures the clean energies for the log, on some batches, is not the method's cost)
    assert adv[-1]["fwd_per_sample"] == pytest.approx(6.0)
    assert adv[-1]["bwd_per_sample"] == pytest.approx(6.0)
    assert std[-1]["fwd_per_sample"] == pytest.approx(1.0)  # no attack: both energies from the one forward
    assert std[-1]["train_energy_adv"] == std[-1]["train_energy_clean"]
    assert adv[-1]["train_energy_adv"] > adv[-1]["train_energy_clean"]  # the attack raises the energy
    assert adv[-1]["train_energy_clean_std"] > 0


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    whole = quick_train(tmp_path / "whole", *NOISE, *FAST)
    part = quick_train(tmp_path / "part", *NOISE, *FAST, "--stop-after", "1")
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


@pytest.mark.parametrize("attack_bn", ["eval", "train"])
def test_attack_runs_in_the_chosen_bn_mode_and_the_loss_in_train_mode(tmp_path, registry, monkeypatch, attack_bn):
    cfg = compose_config(
        registry,
        flags={**QUICK_FLAGS, "attack_bn": attack_bn, "batch_size": 100},
        sets=["dataset.n_train=200", "dataset.n_test=10"],
    )
    assert cfg.attack_bn == attack_bn
    modes_in_loss: list[bool] = []
    original = CrossEntropy.__call__

    def recording(self, batch):
        modes_in_loss.append(batch.model.training)
        return original(self, batch)

    monkeypatch.setattr(CrossEntropy, "__call__", recording)
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    attack = trainer.components["attack"] = CorePGD(steps=1)
    stats = train_steps(trainer)
    assert stats.seen == 200
    assert attack.modes == [attack_bn == "train"] * 2
    assert modes_in_loss == [True, True] and trainer.model.training
