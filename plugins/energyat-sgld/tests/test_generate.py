"""Tests of `energyat generate` on a tiny trained run: files, round trip, judge, metrics path, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from energyat_core.testing import quick_train, run_cli
from energyat_sgld import metrics as metrics_mod

TINY = (
    "--attack", "none", "--loss", "ce",
    "--set", "dataset.n_train=400", "--set", "dataset.n_test=100",
    "--epochs", "1", "--eval-n", "50", "--eval-steps", "1",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gen") / "std"
    quick_train(run_dir, *TINY)
    return run_dir


def generate(run_dir, out, *args):
    return run_cli("generate", run_dir, "--out", out, "--device", "cpu", "--quiet", *args)


def test_generate_writes_grid_npz_and_summary(run, tmp_path):
    out = tmp_path / "samples"
    code = generate(run, out, "--n", "25", "--steps", "3", "--init", "pca", "--batch-size", "10", "--per-row", "3",
                    "--judge", run, "--set", "sampler.sigma=0.01", "--seed", "1")  # fmt: skip
    assert code == 0
    with np.load(out / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.dtype == np.uint8 and images.shape == (25, 32, 32, 3)  # NHWC
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(25)]  # balanced
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 25 and summary["options"]["steps"] == 3 and summary["options"]["init"] == "pca"
    assert summary["options"]["sigma"] == 0.01 and summary["seed"] == 1
    own, judge = summary["accuracy"]["self"], summary["accuracy"]["judge"]
    assert own["overall"] == judge["overall"] and own["per_class"] == judge["per_class"]  # same classifier
    assert len(own["per_class"]) == 10 and 0 <= own["overall"] <= 1
    assert (
        np.isfinite(summary["energy"]["marginal_mean"])
        and summary["energy"]["marginal_mean"] <= (summary["energy"]["joint_mean"])
    )  # E(x) = -logsumexp <= -f_y = E(x, y)
    assert (run / "sgld_init_pca.safetensors").is_file()  # fitted statistics cached in the run
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 34 + 2, 10 * 34 + 2)  # 3 per row, one row per class, 2px padding
    # the grid's first cell is the first class-0 sample
    cell = np.asarray(grid)[2:34, 2:34]
    assert np.array_equal(cell, images[0])


def test_generation_is_seeded_and_the_accuracy_is_on_the_saved_images(run, tmp_path):
    assert generate(run, tmp_path / "a", "--n", "10", "--steps", "2", "--init", "noise") == 0
    assert generate(run, tmp_path / "b", "--n", "10", "--steps", "2", "--init", "noise") == 0
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert np.array_equal(a["images"], b["images"])
    from energyat_core.api import load_run

    model = load_run(run).model
    with torch.no_grad():
        x = torch.from_numpy(a["images"]).permute(0, 3, 1, 2).float() / 255
        acc = (model(x).argmax(1).numpy() == a["labels"]).mean()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["accuracy"]["self"]["overall"] == pytest.approx(acc)


def test_metrics_path_with_a_stand_in_extractor(run, tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
            self.head = torch.nn.Linear(6, 4)

        @torch.no_grad()
        def forward(self, images):
            f = torch.tanh(self.conv(images.float() / 255)).mean(dim=(2, 3))
            return f, self.head(f)

    seen = {}

    def fake_extractor(weights, device):
        seen["weights"] = weights
        return StandIn()

    monkeypatch.setattr(metrics_mod, "inception_extractor", fake_extractor)
    out = tmp_path / "m"
    code = generate(run, out, "--n", "20", "--steps", "1", "--init", "noise", "--metrics", "fid,is", "--real-n", "60")
    assert code == 0 and seen["weights"] is None
    m = json.loads((out / "summary.json").read_text())["metrics"]
    assert m["real_n"] == 60 and m["fid"] > 0 and m["is_mean"] >= 1 and "is_std" in m


def test_missing_inception_weights_fail_before_sampling(run, tmp_path, capsys):
    pytest.importorskip("torch_fidelity")
    out = tmp_path / "x"
    code = generate(run, out, "--n", "10", "--metrics", "fid", "--inception-weights", tmp_path / "none.pth")
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and "--inception-weights" in err


def test_bad_arguments_are_one_line_errors(run, tmp_path, capsys):
    assert generate(run, tmp_path / "x", "--n", "0") == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert generate(run, tmp_path / "x", "--metrics", "kid") == 2
    assert "unknown metric" in capsys.readouterr().err
    assert generate(run, tmp_path / "x", "--set", "sampler.steps=-1") == 2
    assert "'steps' must be >= 0" in capsys.readouterr().err
    assert generate(tmp_path / "missing", tmp_path / "x") == 2
    assert "does not exist" in capsys.readouterr().err
