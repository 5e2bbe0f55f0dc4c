"""``--eps 0`` is clean training: pgd-at at radius 0 follows the loss curve of standard training."""

from __future__ import annotations

import csv

import pytest

from energyat_core.testing import run_cli

#: pgd-at on a tiny synthetic set (the preset's attack, loss and BN mode; not energyat_core.testing's
#: TINY_ARGS, which replace the attack by none)
SMALL = (
    "--method", "pgd-at", "--backbone", "small_cnn", "--dataset", "synthetic", "--set", "dataset.n_train=128",
    "--set", "dataset.n_test=32", "--epochs", "2", "--batch-size", "32", "--eval-n", "32", "--eval-steps", "1",
    "--device", "cpu", "--quiet", "--log", "csv", "--log-every", "1",
)  # fmt: skip


def _losses(run):
    with open(run / "steps.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_pgd_at_at_eps_zero_trains_as_clean_training(tmp_path):
    zero, clean = tmp_path / "zero", tmp_path / "clean"
    assert run_cli("train", *SMALL, "--eps", "0", "--out", zero) == 0
    assert run_cli("train", *SMALL, "--attack", "none", "--out", clean) == 0
    a, b = _losses(zero), _losses(clean)
    assert len(a) == len(b) == 8  # 128 images in batches of 32, two epochs
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    # and a radius above zero is another curve: the attack really is in the loop
    far = tmp_path / "far"
    assert run_cli("train", *SMALL, "--eps", "16/255", "--out", far) == 0
    assert _losses(far) != pytest.approx(b, rel=1e-3)


def test_pgd_at_with_norm_l2_trains_with_the_l2_attack(tmp_path):
    import json

    import torch

    from energyat_core.testing import compose_config, fresh_registry, make_trainer

    run = tmp_path / "l2"
    assert run_cli("train", *SMALL, "--norm", "l2", "--out", run) == 0
    doc = json.loads((run / "config.json").read_text())
    assert (doc["norm"], doc["eps"]) == ("l2", 0.5)
    registry = fresh_registry()
    cfg = compose_config(registry, method="pgd-at", flags={"norm": "l2", "device": "cpu", "backbone": "small_cnn"})
    trainer = make_trainer(cfg, tmp_path / "t", registry)
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    delta = (trainer.components["attack"](trainer.model, x, y) - x).flatten(1)
    assert delta.norm(dim=1).max().item() <= 0.5 + 1e-5  # the L2 ball of the run
    assert delta.abs().max().item() > 8 / 255  # not the L-inf box: L2 steps concentrate on few pixels
