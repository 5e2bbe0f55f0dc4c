"""The run directory through the real CLI: nothing a user had is lost, one writer, no litter.

Every test drives ``energyat train`` and checks the one-line message and the files left on
disk, down to the bytes of the run that must survive.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from energyat_core.core_plugin import CrossEntropy
from energyat_core.run_dir import CONFIG_FILE, METRICS_FILE, lock_path, old_path, read_metrics, staging_path
from energyat_core.testing import STATE_FILE, assert_one_line_error, run_cli
from energyat_core.trainer import Trainer

#: a tiny run, on any dataset...
RUN = (
    "--backbone",
    "small_cnn",
    "--eval-n",
    "32",
    "--eval-steps",
    "1",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--quiet",
)
#: ...on the synthetic one
TINY = (*RUN, "--set", "dataset.n_train=64", "--set", "dataset.n_test=32")


def _train(run: Path, *args: object, base: tuple[str, ...] = TINY) -> int:
    return run_cli("train", *base, *args, "--out", run)


def _one_line_error(capsys, code: int, *needles: str) -> str:
    return assert_one_line_error(code, capsys.readouterr().err, *needles)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path, capsys):
    """A finished run with what other commands add to it: an eval report, plots, a component's cache."""
    run = tmp_path / "runs" / "run"
    assert _train(run, "--seed", "1") == 0
    (run / "eval.json").write_text('{"clean": 0.5}\n')
    (run / "plots").mkdir()
    (run / "plots" / "curves.png").write_bytes(b"\x89PNG old plot")
    (run / "sampler_cache.safetensors").write_bytes(b"old cache")
    capsys.readouterr()
    return run


_ce = CrossEntropy.__call__


def _nan_loss(self, batch):
    """A diverging loss: NaN from the first step."""
    return _ce(self, batch) * float("nan")


def _only_the_run_is_left(run: Path) -> None:
    """No lock, staging or old directory beside the run, no temporary file in it."""
    assert sorted(os.listdir(run.parent)) == [run.name]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(("--device", "cuda"), "--device cuda", id="no-gpu"),
        pytest.param(("--dataset", "imagefolder:/no/such"), "/no/such", id="missing-dataset"),
        pytest.param(("--dataset", "imagefolder:{images}", "--set", "dataset.cache=false"), "2.png", id="bad-image"),
    ],
)
def test_overwrite_that_cannot_start_leaves_the_old_run_byte_identical(old_run, tmp_path, capsys, args, needle):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    images = tmp_path / "images"  # an image folder with one file that is no image
    for split, label in [(s, c) for s in ("train", "test") for c in "ab"]:
        (images / split / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(images / split / label / "1.png")
    (images / "train" / "b" / "2.png").write_bytes(b"not a png")
    args = tuple(a.format(images=images) for a in args)
    before = _snapshot(old_run)
    _one_line_error(capsys, _train(old_run, *args, "--overwrite", base=RUN if "--dataset" in args else TINY), needle)
    assert _snapshot(old_run) == before
    _only_the_run_is_left(old_run)


def test_overwrite_that_fails_in_its_first_epoch_leaves_the_old_run_byte_identical(old_run, capsys, monkeypatch):
    before = _snapshot(old_run)

    monkeypatch.setattr(CrossEntropy, "__call__", _nan_loss)
    line = _one_line_error(capsys, _train(old_run, "--overwrite"), "non-finite", "the old run in", "is untouched")
    assert "last good checkpoint" not in line
    assert _snapshot(old_run) == before
    _only_the_run_is_left(old_run)

    def interrupted(self, progress, task):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)  # Ctrl-C in the first epoch
    assert _train(old_run, "--overwrite") == 130
    assert _snapshot(old_run) == before
    _only_the_run_is_left(old_run)

    def crash(self, progress, task):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    try:
        code = _train(old_run, "--overwrite")
    except RuntimeError:
        code = 1
    assert code != 0
    assert _snapshot(old_run) == before
    _only_the_run_is_left(old_run)


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(CrossEntropy, "__call__", _nan_loss)
    line = _one_line_error(capsys, _train(tmp_path / "run"), "non-finite at epoch 1", "no checkpoint was written")
    assert "last good checkpoint" not in line


def test_successful_overwrite_replaces_the_whole_run(old_run, capsys):
    assert _train(old_run, "--overwrite", "--lr", "0.01") == 0
    assert json.loads((old_run / CONFIG_FILE).read_text())["lr"] == 0.01
    assert sorted(os.listdir(old_run)) == sorted(
        [CONFIG_FILE, METRICS_FILE, "model.safetensors", "model_best.safetensors", STATE_FILE, "record.json"]
    )  # no eval.json, plots/ or cache of the old run
    assert [m["epoch"] for m in read_metrics(old_run)] == [1]
    _only_the_run_is_left(old_run)


def test_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    _one_line_error(capsys, _train(target), "is a file", "--out")
    _one_line_error(capsys, _train(target, "--overwrite"), "is a file")
    assert target.read_text() == "mine"


HOLDER = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()} {socket.gethostname()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(old_run, capsys):
    before = _snapshot(old_run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path(old_run))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        needles = ("being written by another energyat process", f"PID {holder.pid}", f"host {socket.gethostname()}")
        _one_line_error(capsys, run_cli("train", "--resume", old_run, "--epochs", "2", "--quiet"), *needles)
        _one_line_error(capsys, _train(old_run, "--overwrite"), *needles)
        _one_line_error(capsys, _train(old_run), *needles)
        assert _snapshot(old_run) == before
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder: no stale lock to remove by hand
    assert run_cli("train", "--resume", old_run, "--epochs", "2", "--quiet") == 0
    assert [m["epoch"] for m in read_metrics(old_run)] == [1, 2]
    assert not lock_path(old_run).exists()


def test_resume_extends_a_run_and_refuses_flags_it_would_ignore(old_run, capsys):
    _one_line_error(capsys, run_cli("train", "--resume", old_run, "--lr", "0.5"), "--lr cannot change", "--epochs")
    assert run_cli("train", "--resume", old_run, "--quiet") == 0
    assert "already complete (1/1 epochs)" in capsys.readouterr().out
    assert run_cli("train", "--resume", old_run, "--epochs", "2", "--device", "cpu", "--quiet") == 0
    assert json.loads((old_run / CONFIG_FILE).read_text())["epochs"] == 2
    assert [m["epoch"] for m in read_metrics(old_run)] == [1, 2]
    _one_line_error(capsys, run_cli("train", "--resume", old_run, "--epochs", "0"), "--epochs")


def test_resume_drops_a_torn_metrics_line_and_cleans_leftovers(old_run, capsys):
    with open(old_run / METRICS_FILE, "a") as f:
        f.write('{"epoch": 2, "step": 4, "train_lo')  # a kill in the middle of the append
    assert [m["epoch"] for m in read_metrics(old_run)] == [1]  # readers skip it
    litter = [old_run / ".model.safetensors.123-abcd.tmp", old_run / ".config.json.9-ff.tmp"]
    for path in litter:
        path.write_bytes(b"half")
    staging_path(old_run).mkdir()
    (staging_path(old_run) / "model.safetensors").write_bytes(b"half a run")
    assert run_cli("train", "--resume", old_run, "--epochs", "2", "--quiet") == 0
    lines = (old_run / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    _only_the_run_is_left(old_run)


def test_a_swap_cut_short_by_a_kill_is_finished_on_the_next_start(old_run, tmp_path, capsys):
    new = tmp_path / "new" / "run"
    assert _train(new, "--lr", "0.01") == 0
    os.rename(old_run, old_path(old_run))  # killed between the two renames of the swap
    os.rename(new, staging_path(old_run))
    assert run_cli("train", "--resume", old_run, "--quiet") == 0  # the next start finishes it
    assert json.loads((old_run / CONFIG_FILE).read_text())["lr"] == 0.01
    assert not (old_run / "eval.json").exists()
    _only_the_run_is_left(old_run)
