"""Files from others, through the real CLI: weights, checkpoint metadata, state files and images.

Each hostile or damaged file ends the command with exit code 2 and one line ``error: ...``
that names the file and the problem, and leaves the files on disk as they were; a file that
can be read at full fidelity (16-bit images, half-precision weights) is read so, and a
conversion is said in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from energyat_core.checkpoint import load_state, save_state
from energyat_core.testing import run_cli

TINY = (
    "--backbone", "small_cnn", "--set", "dataset.n_train=64", "--set", "dataset.n_test=32", "--eval-n", "32",
    "--eval-steps", "1", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet",
)  # fmt: skip
QUICK_EVAL = ("--n", "8", "--no-sanity", "--set", "evaluator.pgd.steps=1", "--device", "cpu")
#: training on a small image folder
FOLDER_ARGS = (
    "--backbone", "small_cnn", "--epochs", "1", "--batch-size", "4", "--eval-n", "4", "--eval-steps", "1",
    "--device", "cpu", "--quiet",
)  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENERGYAT_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of two epochs, stopped after the first (its resume has an epoch left to train)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert run_cli("train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", run) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_error_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "bug" not in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def rewrite_model(run: Path, change) -> None:
    """Save the run's model file again with ``change(tensors, metadata)`` applied."""
    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(path)
    change(tensors, metadata)
    save_file(tensors, path, metadata=metadata)


# -- weights --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64])
def test_non_float_weights_are_refused_with_the_tensors_name(cli, run, dtype):
    key = "net.body.0.weight"
    rewrite_model(run, lambda tensors, _: tensors.update({key: (tensors[key] * 100).to(dtype)}))
    before = snapshot(run)
    code, _, err = cli("eval", run, *QUICK_EVAL)
    one_error_line(code, err, str(dtype).removeprefix("torch."), f"'{key}'", "model.safetensors", "float32")
    assert snapshot(run) == before  # no eval.json


def test_non_float_tensors_in_a_plain_weights_file(cli, trained, tmp_path):
    state = {k.removeprefix("net."): v for k, v in load_file(trained / "model.safetensors").items() if "net." in k}
    state["linear.weight"] = state["linear.weight"].to(torch.uint8)
    save_file(state, tmp_path / "plain.safetensors")
    code, _, err = cli(
        "eval", "--weights", tmp_path / "plain.safetensors", "--backbone", "small_cnn", "--dataset", "synthetic",
        *QUICK_EVAL,
    )  # fmt: skip
    one_error_line(code, err, "uint8", "'linear.weight'", "plain.safetensors")


def test_half_precision_weights_are_converted_and_said_so(cli, run):
    rewrite_model(
        run, lambda tensors, _: tensors.update({k: v.half() for k, v in tensors.items() if v.is_floating_point()})
    )
    code, _, err = cli("eval", run, *QUICK_EVAL)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(notes) == 1 and "converted" in notes[0] and "float16" in notes[0] and "to float32" in notes[0], err
    assert (run / "eval.json").is_file()


def test_nan_weights_are_refused(cli, run):
    rewrite_model(run, lambda tensors, _: tensors["net.linear.weight"].fill_(float("nan")))
    code, _, err = cli("eval", run, *QUICK_EVAL)
    one_error_line(code, err, "NaN", "'net.linear.weight'")


# -- metadata and state files ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "needle"),
    [("{not json", "is not valid JSON"), ('"[1, 2"', "is not valid JSON"), ("[1, 2]", "JSON array, not an object")],
)
def test_bad_run_config_in_checkpoint_metadata(cli, run, config, needle):
    rewrite_model(run, lambda _, metadata: metadata.update(config=config))
    code, _, err = cli("eval", run, *QUICK_EVAL)
    one_error_line(code, err, needle, str(run / "model.safetensors"))


def test_bad_json_in_the_state_file_metadata(cli, run):
    path = run / "state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    save_file(load_file(path), path, metadata={**metadata, "skeleton": metadata["skeleton"][:-7]})
    before = snapshot(run)
    code, _, err = cli("train", "--resume", run, "--quiet")
    one_error_line(code, err, "'skeleton'", "state.safetensors", "not valid JSON")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("epoch", -3, "epoch = -3"),
        ("step", -1, "step = -1"),
        ("elapsed", float("nan"), "elapsed = nan"),
        ("best_robust", 7.0, "best_robust = 7.0"),
        ("epoch", "two", "epoch = 'two'"),
        ("optimizer", None, "no valid 'optimizer'"),
        ("optimizer", {"state": {}}, "the optimiser state"),
        ("rng", [{"cpu": torch.zeros(3)}], "no valid 'rng'"),
    ],
)
def test_nonsense_counters_in_the_state_file(cli, run, key, value, needle):
    state = load_state(run / "state.safetensors")
    state[key] = value
    save_state(run / "state.safetensors", state)
    before = snapshot(run)
    code, _, err = cli("train", "--resume", run, "--quiet")
    one_error_line(code, err, needle, "state.safetensors")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("width", "needle"), [(10**9, "too large to build"), (4096, "the model its config describes needs")]
)
def test_a_config_asking_for_a_huge_model_is_refused_before_allocating_it(cli, run, width, needle):
    def wider(_, metadata):
        config = json.loads(metadata["config"])
        config["backbone"]["width"] = width
        metadata["config"] = json.dumps(config)

    rewrite_model(run, wider)
    code, _, err = cli("eval", run, *QUICK_EVAL)
    have = sum(t.numel() for t in load_file(run / "model.safetensors").values())
    one_error_line(code, err, "model.safetensors", f"holds {have:,} values", needle)


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_instead_of_the_weights(cli, run, kind):
    path = run / "model.safetensors"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this system")
        os.mkfifo(path)
    code, _, err = cli("eval", run, *QUICK_EVAL)
    line = one_error_line(code, err, "is not a regular file", "a folder" if kind == "folder" else "a FIFO")
    assert "does not exist" not in line
    code, _, err = cli("eval", "--weights", path, "--backbone", "small_cnn", "--dataset", "synthetic", *QUICK_EVAL)
    one_error_line(code, err, "is not a regular file")


def test_a_file_instead_of_a_run_directory(cli, run):
    code, _, err = cli("eval", run / "model.safetensors", *QUICK_EVAL)
    one_error_line(code, err, "is a file, not a run directory", "--weights")


# -- images ----------------------------------------------------------------------------------------
def image_folder(root: Path, write, classes=("cat", "dog")) -> Path:
    """``root/{train,test}/<class>/<k>.png``, each written by ``write(path, class index, k)``."""
    for split, n in (("train", 4), ("test", 2)):
        for label, name in enumerate(classes):
            for k in range(n):
                path = root / split / name / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write(path, label, k)
    return root


def rgb(path: Path, label: int, k: int) -> None:
    Image.new("RGB", (8, 8), (200 * label, 30 + k, 40)).save(path)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_16_bit_images_are_read_at_full_depth(cli, tmp_path):
    def grey16(path: Path, label: int, k: int) -> None:  # above 255: Pillow's convert("RGB") would clip them all
        Image.fromarray(np.full((8, 8), 20000 + 40000 * label + k, dtype=np.uint16)).save(path)

    root = image_folder(tmp_path / "pics16", grey16)
    code, _, err = cli("train", "--dataset", f"imagefolder:{root}", *FOLDER_ARGS, "--out", tmp_path / "run")
    assert code == 0, err
    (cached,) = (tmp_path / "cache").glob("imagefolder-*.npz")  # what the run decoded
    with np.load(cached) as arrays:
        values = {int(v) for v in np.unique(np.concatenate([arrays["train_x"].ravel(), arrays["test_x"].ravel()]))}
    assert values == {round((20000 + 40000 * label + k) * 255 / 65535) for label in (0, 1) for k in range(4)}


def test_a_decompression_bomb_is_one_line(cli, tmp_path):
    root = image_folder(tmp_path / "bomb", rgb)
    bomb = root / "train" / "dog" / "2.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    code, _, err = cli("train", "--dataset", f"imagefolder:{root}", *FOLDER_ARGS, "--out", tmp_path / "run")
    one_error_line(code, err, str(bomb), "decompression bomb")
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_one_class_dataset_is_a_data_error_with_a_fix(cli, tmp_path):
    root = image_folder(tmp_path / "one", rgb, classes=("only",))
    code, _, err = cli("train", "--dataset", f"imagefolder:{root}", *FOLDER_ARGS, "--out", tmp_path / "run")
    one_error_line(code, err, "one class folder ('only')", "at least two", "add a folder")
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_run_config_that_is_not_json_names_the_file_in_eval_and_plot(cli, run):
    rewrite_model(run, lambda _, metadata: metadata.update(config="{"))
    code, _, err = cli("plot", run, "--n", "4", "--steps", "1", "--device", "cpu")
    one_error_line(code, err, "model.safetensors", "not valid JSON")
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
