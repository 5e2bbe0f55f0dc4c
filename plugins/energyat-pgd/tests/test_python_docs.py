"""docs/python.md and examples/python_api.py run as written, and ``energyat_core.attack("pgd", ...)``
is the training attack."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

import energyat_core as ea
from energyat_core.testing import compose_config, fresh_registry, make_trainer

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "python.md"
EXAMPLE = ROOT / "examples" / "python_api.py"


@pytest.mark.skipif(not DOCS.is_file(), reason="docs/python.md is not in this checkout")
def test_every_code_block_of_the_python_docs_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "runs" / "python-demo" / "model.safetensors").is_file()


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="examples/ is not in this checkout")
def test_the_example_script_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python_api.py", "--out", str(tmp_path / "run")])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "trained" in out and "worst case" in out


def test_the_api_attack_is_the_training_attack(tmp_path):
    registry = fresh_registry()
    cfg = compose_config(registry, method="pgd-at", flags={"device": "cpu", "eps": "4/255", "backbone": "small_cnn"})
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    model = trainer.model.eval()
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    torch.manual_seed(3)
    trained = trainer.components["attack"](model, x, y)
    torch.manual_seed(3)
    api = ea.attack("pgd", model, eps=4 / 255, steps=10)(x, y)
    assert torch.equal(trained, api)
