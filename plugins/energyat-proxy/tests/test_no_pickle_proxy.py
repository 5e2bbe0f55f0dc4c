"""A proxy file is read with ``allow_pickle=False``: crafted pickles in it never run.

Each crafted file carries a live payload (unpickling it creates a marker file, checked
first). Through the real CLI, ``energyat train --source proxy:FILE`` must end with one line
``error: ...`` (exit code 2), and the marker must never appear.
"""

from __future__ import annotations

import pathlib
import pickle
import shutil

import numpy as np
import pytest
import torch

from energyat_core.testing import TINY_ARGS as TINY
from energyat_core.testing import Payload, run_cli


def objects(marker: pathlib.Path, n: int = 8) -> np.ndarray:
    """An object array of payloads: ``np.save`` pickles it into the file."""
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = Payload(marker)
    return out


def crafted(tmp_path: pathlib.Path, case: str, marker: pathlib.Path) -> pathlib.Path:
    images = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 10
    path = tmp_path / "proxy.npz"
    if case == "raw-pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif case == "torch-pickle":
        torch.save({"images": Payload(marker)}, path)
    elif case == "npy-objects":
        path = tmp_path / "proxy.npy"
        np.save(path, objects(marker))
    else:
        arrays = {
            "object-images": {"images": objects(marker), "labels": labels},
            "object-labels": {"images": images, "labels": objects(marker)},
            "object-classes": {"images": images, "labels": labels, "classes": objects(marker, 10)},
            "object-num-classes": {"images": images, "labels": labels, "num_classes": objects(marker, 1)},
        }[case]
        np.savez(path, **arrays)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def test_the_payload_is_live(tmp_path, marker):
    path = crafted(tmp_path, "object-labels", marker)
    with np.load(path, allow_pickle=True) as npz:
        npz["labels"]
    assert marker.exists()


def refused(capsys, code, marker) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert not marker.exists(), "the crafted pickle was unpickled"
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


CASES = ["raw-pickle", "torch-pickle", "npy-objects", "object-images", "object-labels", "object-classes"]


@pytest.mark.parametrize("case", [*CASES, "object-num-classes"])
def test_crafted_proxy_file_is_refused(tmp_path, capsys, marker, case):
    path = crafted(tmp_path, case, marker)
    capsys.readouterr()
    code = run_cli("train", *TINY, "--source", f"proxy:{path}", "--out", tmp_path / "out")
    line = refused(capsys, code, marker)
    assert str(path) in line


def test_a_pseudo_labeller_whose_weights_are_a_pickle(tmp_path, capsys, marker):
    labeller = tmp_path / "labeller"
    assert run_cli("train", *TINY, "--out", labeller) == 0
    crafted_run = tmp_path / "crafted"
    shutil.copytree(labeller, crafted_run)
    torch.save({"weight": Payload(marker)}, crafted_run / "model.safetensors")
    np.savez(tmp_path / "proxy.npz", images=np.zeros((8, 32, 32, 3), dtype=np.uint8))
    capsys.readouterr()
    sets = ("--set", "source.labels=pseudo", "--set", f"source.pseudo_labeler={crafted_run}")
    code = run_cli("train", *TINY, "--source", f"proxy:{tmp_path / 'proxy.npz'}", *sets, "--out", tmp_path / "out")
    assert "model.safetensors" in refused(capsys, code, marker)
