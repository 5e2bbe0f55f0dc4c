"""Shared fixtures: a fresh registry, and a quick way to call the CLI in-process."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture
def registry():
    from energyat_core.registry import Registry

    return Registry(set())


@pytest.fixture
def cli(capsys):
    """Run ``energyat ARGS``; returns (exit code, stdout, stderr)."""
    from energyat_core.cli import main

    def run(*args: str):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
