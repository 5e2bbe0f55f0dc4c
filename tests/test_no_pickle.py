"""Nothing runs code it was handed: a crafted pickle given wherever a user hands core a file.

Each file below is a live payload: unpickling it creates a marker file (checked first, so
the test cannot pass on a dud). Every path that takes a file from a user or a cache gets
one, through the real CLI; the marker must never appear, and a file that cannot be used
ends the command with one line ``error: ...`` (exit code 2).
"""

from __future__ import annotations

import pathlib
import pickle
import shutil

import pytest
import torch

from energyat_core.testing import raw_pickle, run_cli, torch_pickle

SMALL = ("dataset.n_train=64", "dataset.n_test=32")
TINY = ("--eval-n", "32", "--eval-steps", "1", "--batch-size", "32", "--device", "cpu", "--quiet")


def train_args(out, backbone="small_cnn", dataset="synthetic", sets=SMALL, epochs=1, *more):
    """``energyat train`` arguments of a tiny run."""
    sets_args = [arg for option in sets for arg in ("--set", option)]
    return (
        "train",
        "--backbone",
        backbone,
        "--dataset",
        dataset,
        *sets_args,
        *TINY,
        "--epochs",
        epochs,
        "--out",
        out,
        *more,
    )


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def test_the_payloads_are_live(tmp_path, marker):
    """Loaded unsafely, both payloads do create the marker; the other tests are not vacuous."""
    torch.load(torch_pickle(tmp_path / "a.pth", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(raw_pickle(tmp_path / "b.pkl", marker).read_bytes())
    assert marker.exists()
    marker.unlink()


def refused(result, marker: pathlib.Path) -> str:
    """Assert: exit code 2, one stderr line starting with ``error:``, no marker. Returns the line."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert not marker.exists(), "the crafted pickle was unpickled"
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for 1 of 2 epochs (resumable), with model, best model and state files."""
    run_dir = tmp_path_factory.mktemp("nopickle") / "run"
    assert run_cli(*train_args(run_dir, epochs=2), "--stop-after", "1") == 0
    for name in ("model.safetensors", "model_best.safetensors", "state.safetensors", "config.json"):
        assert (run_dir / name).is_file(), name
    return run_dir


def copy_with(run, tmp_path, name, make, marker) -> pathlib.Path:
    """A copy of ``run`` whose file ``name`` is replaced by a crafted pickle."""
    target = tmp_path / "run"
    shutil.copytree(run, target)
    make(target / name, marker)
    return target


@pytest.mark.parametrize("make", [torch_pickle, raw_pickle])
@pytest.mark.parametrize("name", ["model.safetensors", "model_best.safetensors"])
def test_eval_of_a_run_whose_weights_are_a_pickle(cli, run, tmp_path, marker, name, make):
    run_dir = copy_with(run, tmp_path, name, make, marker)
    which = "best" if name == "model_best.safetensors" else "model"
    line = refused(cli("eval", run_dir, "--checkpoint", which, "--n", "8", "--device", "cpu"), marker)
    assert name in line


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_eval_weights_file_that_is_a_pickle(cli, tmp_path, marker, suffix):
    weights = torch_pickle(tmp_path / f"w{suffix}", marker)
    args = ("--weights", weights, "--backbone", "small_cnn", "--dataset", "synthetic", "--n", "8", "--device", "cpu")
    line = refused(cli("eval", *args), marker)
    assert str(weights) in line


@pytest.mark.parametrize("make", [torch_pickle, raw_pickle])
def test_resume_from_a_state_file_that_is_a_pickle(cli, run, tmp_path, marker, make):
    run_dir = copy_with(run, tmp_path, "state.safetensors", make, marker)
    line = refused(cli("train", "--resume", run_dir, "--quiet"), marker)
    assert "state.safetensors" in line


def test_resume_with_a_model_file_that_is_a_pickle(cli, run, tmp_path, marker):
    """``--resume`` restores from the state file; a pickled model.safetensors is never unpickled."""
    run_dir = copy_with(run, tmp_path, "model.safetensors", torch_pickle, marker)
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert not marker.exists()
    if code != 0:  # refusing the run is fine too, with one line
        refused((code, "", err), marker)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_pretrained_file_that_is_a_pickle(cli, tmp_path, marker, suffix):
    pytest.importorskip("timm")
    weights = torch_pickle(tmp_path / f"pretrained{suffix}", marker)
    sets = (*SMALL, f"backbone.pretrained_file={weights}")
    line = refused(cli(*train_args(tmp_path / "out", backbone="timm:resnet18", sets=sets)), marker)
    assert str(weights) in line and "\x1b" not in line
    if suffix != ".safetensors":
        assert "Python objects besides tensors, which are never unpickled" in line


def test_torchvision_cifar_folder_of_pickles(cli, tmp_path, marker):
    """torchvision unpickles CIFAR batches, but only files whose MD5 is the official one."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        raw_pickle(folder / name, marker)
    raw_pickle(folder / "batches.meta", marker)
    args = train_args(tmp_path / "out", dataset="cifar10", sets=["dataset.download=false"])
    line = refused(cli(*args, "--data-dir", folder.parent), marker)
    assert "CIFAR-10" in line and "corrupted" in line  # torchvision's MD5 check refused the files


def test_decoded_image_cache_that_is_a_pickle(cli, tmp_path, marker, monkeypatch):
    """The cache of decoded images (``ENERGYAT_CACHE_DIR``) is read with ``allow_pickle=False``."""
    from PIL import Image

    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for k in range(2):
            (tmp_path / "images" / split / f"c{k}").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * k + i, 20 * i, 100)).save(
                    tmp_path / "images" / split / f"c{k}" / f"{i}.png"
                )
    dataset, sets = f"imagefolder:{tmp_path / 'images'}", ["dataset.image_size=8"]
    code, _, err = cli(*train_args(tmp_path / "first", dataset=dataset, sets=sets))
    assert code == 0, err
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert cached
    for path in cached:
        raw_pickle(path, marker)
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        code, _, err = cli(*train_args(tmp_path / "second", dataset=dataset, sets=sets))
    assert not marker.exists()
    assert code == 0, err  # an unreadable cache is only a warning: the images are decoded again
