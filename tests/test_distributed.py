"""torchrun with 2 CPU ranks (gloo) trains the same model as 1 process with the same global batch.

No training attack: core's only attack is ``none`` (core tests use no first-party plugin), and
a random attack would draw different noise on each rank; so both runs see the same inputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

from energyat_core.testing import QUICK_ARGS, read_metrics

ARGS = (
    "train",
    *QUICK_ARGS,  # small_cnn on synthetic images, cosine lr 0.05, CPU; then, overriding it:
    "--set",
    "backbone.batchnorm=false",  # per-sample independent model
    "--set",
    "dataset.n_train=256",
    "--set",
    "dataset.n_test=64",
    "--eval-n",
    "64",
    "--eval-steps",
    "2",
    "--no-augment",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--quiet",
)


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_two_ranks_equal_one_rank(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    _run([sys.executable, "-m", "energyat_core", *ARGS, "--out", str(tmp_path / "one")])
    _run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "energyat_core",
            *ARGS,
            "--out",
            str(tmp_path / "two"),
        ]
    )
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(m1, m2, strict=True):
        for key in ("train_loss", "clean_acc", "energy_clean"):
            assert abs(a[key] - b[key]) < 1e-3, (key, a[key], b[key])
        # the per-epoch PGD starts from random noise that each rank draws from its own stream, so a
        # borderline image or two of the 64 may fall on the other side
        assert abs(a["robust_acc"] - b["robust_acc"]) <= 2 / 64 + 1e-9, (a["robust_acc"], b["robust_acc"])
