"""Helpers for tests of energyat and its plugins: quick CPU runs on the synthetic dataset.

::

    from energyat_core.testing import quick_train

    def test_my_method_is_robust(tmp_path):
        metrics = quick_train(tmp_path / "run", "--method", "my-method")
        assert metrics[-1]["robust_acc"] > 0.3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: a small, fast setting in which adversarial training visibly works on CPU
QUICK_ARGS = (
    "--backbone",
    "small_cnn",
    "--dataset",
    "synthetic",
    "--set",
    "dataset.n_train=2000",
    "--set",
    "dataset.n_test=500",
    "--eval-n",
    "500",
    "--epochs",
    "4",
    "--batch-size",
    "128",
    "--lr",
    "0.05",
    "--schedule",
    "cosine",
    "--device",
    "cpu",
    "--seed",
    "0",
)


def run_cli(*args: Any) -> int:
    """Run ``energyat ARGS`` in-process; return its exit code."""
    from energyat_core.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def quick_train(run_dir: str | Path, *args: Any, quick: bool = True) -> list[dict[str, Any]]:
    """Train with :data:`QUICK_ARGS` (later ``args`` override them) and return the metrics.

    Raises ``AssertionError`` if the command fails.
    """
    argv = ["train", *(QUICK_ARGS if quick else ()), *args, "--out", run_dir, "--quiet"]
    code = run_cli(*argv)
    assert code == 0, f"energyat {' '.join(map(str, argv))} exited with {code}"
    return read_metrics(run_dir)


def fresh_registry(disabled: set[str] | None = None) -> Any:
    """A registry built anew (not the cached one), with every installed plugin but ``disabled``."""
    from energyat_core.registry import Registry

    return Registry(set(disabled or ()))


def compose_config(registry: Any = None, **kwargs: Any) -> Any:
    """A validated :class:`~energyat_core.run_config.RunConfig`, as ``energyat train`` composes it.

    ``compose_config(method="trades", flags={"epochs": 2}, sets=["attack.steps=3"])``.
    """
    from energyat_core.run_config import compose

    return compose(registry or fresh_registry(), **kwargs)

