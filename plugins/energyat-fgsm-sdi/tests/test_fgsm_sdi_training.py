"""End to end on CPU: FGSM-SDI is robust without catastrophic overfitting, counts its passes, resumes exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from energyat_core.testing import load_state, quick_train, read_metrics, run_cli

#: a smaller generator and more frequent updates, so that G learns within a few CPU epochs
SDI_QUICK = ("--method", "fgsm-sdi", "--set", "attack.channels=16", "--set", "attack.update_every=2")
#: allowed drop of the last epoch's PGD accuracy below the best epoch's (catastrophic overfitting drops it to ~0)
COLLAPSE_MARGIN = 0.10


def expected_passes(epoch: int, batches_per_epoch: int, update_every: int) -> float:
    """Forward (= backward) passes per sample in one epoch: 3 per batch, 2 more per generator update."""
    steps = range((epoch - 1) * batches_per_epoch, epoch * batches_per_epoch)
    updates = sum(1 for s in steps if s % update_every == 0)
    return 3 + 2 * updates / batches_per_epoch


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    return quick_train(tmp_path_factory.mktemp("std") / "run", "--attack", "none", "--loss", "ce")


def test_fgsm_sdi_beats_standard_training_without_collapse(standard, tmp_path):
    sdi = quick_train(tmp_path / "sdi", *SDI_QUICK)
    assert sdi[-1]["robust_acc"] > standard[-1]["robust_acc"] + 0.2
    best = max(m["robust_acc"] for m in sdi)
    assert sdi[-1]["robust_acc"] >= best - COLLAPSE_MARGIN  # no catastrophic overfitting
    assert sdi[-1]["clean_acc"] > 0.5
    # cost accounting: 3 + 2/k forward and backward passes per sample through the classifier (the
    # engine's clean-energy measurement for the log is not counted)
    batches = sdi[0]["step"]
    for m in sdi:
        assert m["fwd_per_sample"] == pytest.approx(expected_passes(m["epoch"], batches, 2))
        assert m["bwd_per_sample"] == pytest.approx(expected_passes(m["epoch"], batches, 2))


def generator_state(run_dir) -> dict[str, torch.Tensor]:
    return load_state(run_dir / "state.safetensors")["components"]["attack"]


def test_resumed_run_restores_generator_and_model_exactly(tmp_path):
    # 4 batches per epoch and an update every 3 batches: epoch 2's update (step 6) follows the counter
    args = (*SDI_QUICK, "--set", "attack.update_every=3", "--epochs", "2", "--set", "dataset.n_train=600")
    args = (*args, "--eval-n", "100")
    whole = quick_train(tmp_path / "whole", *args)
    part = quick_train(tmp_path / "part", *args, "--stop-after", "1")
    assert len(part) == 1
    assert run_cli("train", "--resume", tmp_path / "part", "--quiet") == 0
    resumed = read_metrics(tmp_path / "part")
    assert [m["epoch"] for m in resumed] == [1, 2]
    for a, b in zip(whole, resumed, strict=True):
        for key in ("train_loss", "clean_acc", "robust_acc", "fwd_per_sample"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key

    g1, g2 = generator_state(tmp_path / "whole"), generator_state(tmp_path / "part")
    assert g1["step"] == g2["step"] == 8
    assert g1["generator"].keys() == g2["generator"].keys()
    for k in g1["generator"]:
        torch.testing.assert_close(g1["generator"][k], g2["generator"][k], rtol=0, atol=1e-6)
    for i, state in g1["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(value, g2["optimizer"]["state"][i][key], rtol=0, atol=1e-6)
    w1, w2 = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-6)
