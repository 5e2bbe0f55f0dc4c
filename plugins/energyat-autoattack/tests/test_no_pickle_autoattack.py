"""The AutoAttack state file is safetensors: a crafted pickle in its place never runs.

``autoattack_state.safetensors`` in a run directory is read when ``energyat eval`` resumes
AutoAttack. A pickle there (a live payload: unpickling it creates a marker file) ends the
command with one line ``error: ...`` (exit code 2), and the marker never appears.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from energyat_autoattack.state import STATE_FILE
from energyat_core.testing import TINY_ARGS as TINY
from energyat_core.testing import Payload, run_cli

pytest.importorskip("pyautoattack")


def test_a_crafted_autoattack_state_file_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    torch.save({"x": Payload(marker)}, tmp_path / "live.pth")
    torch.load(tmp_path / "live.pth", weights_only=False)
    assert marker.exists()  # the payload is live
    marker.unlink()

    run_dir = tmp_path / "run"
    assert run_cli("train", *TINY, "--out", run_dir) == 0
    (run_dir / STATE_FILE).write_bytes(pickle.dumps(Payload(marker)))
    capsys.readouterr()
    code = run_cli("eval", run_dir, "--evaluator", "autoattack:standard", "--n", "8", "--device", "cpu")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert not marker.exists(), "the crafted pickle was unpickled"
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and STATE_FILE in lines[0], err
