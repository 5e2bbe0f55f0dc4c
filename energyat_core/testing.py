"""Helpers for tests of energyat and its plugins: quick CPU runs on the synthetic dataset.

::

    from energyat_core.testing import quick_train

    def test_my_method_is_robust(tmp_path):
        metrics = quick_train(tmp_path / "run", "--method", "my-method")
        assert metrics[-1]["robust_acc"] > 0.3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energyat_core.checkpoint import load_state, save_state
from energyat_core.run_dir import STATE_FILE, read_metrics
from energyat_core.schedules import lr_at

__all__ = [
    "FakeEntryPoint",
    "QUICK_ARGS",
    "QUICK_FLAGS",
    "QUICK_SETS",
    "STATE_FILE",
    "TINY_ARGS",
    "assert_one_line_error",
    "Payload",
    "compose_config",
    "fresh_registry",
    "load_state",
    "lr_at",
    "make_trainer",
    "quick_train",
    "raw_pickle",
    "read_metrics",
    "record_modes",
    "record_schedule",
    "run_cli",
    "save_state",
    "torch_pickle",
    "train_steps",
]

#: a small, fast setting in which adversarial training visibly works on CPU, as run settings...
QUICK_FLAGS: dict[str, Any] = {
    "backbone": "small_cnn",
    "dataset": "synthetic",
    "eval_n": 500,
    "epochs": 4,
    "batch_size": 128,
    "lr": 0.05,
    "schedule": "cosine",
    "device": "cpu",
    "seed": 0,
}
#: ...and part options (``compose_config(flags=QUICK_FLAGS, sets=[*QUICK_SETS])``)
QUICK_SETS = ("dataset.n_train=2000", "dataset.n_test=500")
#: the same setting as ``energyat train`` arguments
QUICK_ARGS = (
    *(arg for key, value in QUICK_FLAGS.items() for arg in (f"--{key.replace('_', '-')}", str(value))),
    *(arg for option in QUICK_SETS for arg in ("--set", option)),
)


def run_cli(*args: Any) -> int:
    """Run ``energyat ARGS`` in-process; return its exit code."""
    from energyat_core.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


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


def make_trainer(cfg: Any, run_dir: str | Path, registry: Any = None) -> Any:
    """A quiet :class:`~energyat_core.trainer.Trainer` of ``cfg``, for tests that drive single steps.

    Its step components are ``trainer.components`` by kind; replace one to observe the step::

        trainer = make_trainer(compose_config(flags={"device": "cpu"}), tmp_path / "run")
        trainer.components["attack"] = RecordingAttack()
        stats = train_steps(trainer)
    """
    from energyat_core.trainer import Trainer

    return Trainer(cfg, run_dir, registry or fresh_registry(), quiet=True)


def train_steps(trainer: Any, epoch: int = 0) -> Any:
    """Run ``trainer.train_step`` on every batch of one epoch (no evaluation, no checkpoint).

    Returns the epoch's :class:`~energyat_core.epoch_stats.EpochStats` (``seen``: images trained on).
    """
    from energyat_core.epoch_stats import EpochStats

    stats = EpochStats.zeros(trainer.device)
    for x, y in trainer.loader.epoch(epoch):
        trainer.train_step(x, y, stats)
    return stats


def record_modes(trainer: Any) -> dict[bool, list[bool]]:
    """Watch a trainer's model: ``model.training`` at every forward pass, under ``True`` while the
    training attack runs and under ``False`` otherwise (the loss's passes). Wraps the attack."""
    attack, inside = trainer.components["attack"], [False]
    modes: dict[bool, list[bool]] = {True: [], False: []}
    trainer.model.register_forward_pre_hook(lambda module, args: modes[inside[0]].append(module.training))

    def spy(model, x, y):
        inside[0] = True
        try:
            return attack(model, x, y)
        finally:
            inside[0] = False

    trainer.components["attack"] = spy
    return modes


def record_schedule(trainer: Any) -> list[tuple[float, float]]:
    """Watch a trainer's optimiser: its (lr, momentum) at every training step, as the step's attack
    sees them (after the schedule set them). Wraps the attack."""
    attack = trainer.components["attack"]
    seen: list[tuple[float, float]] = []

    def spy(model, x, y):
        group = trainer.optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"]))
        return attack(model, x, y)

    trainer.components["attack"] = spy
    return seen


#: the smallest run that exercises everything (``quick_train`` is the setting where training visibly works)
TINY_ARGS = (
    "--backbone", "small_cnn", "--dataset", "synthetic", "--attack", "none", "--loss", "ce",
    "--set", "dataset.n_train=64", "--set", "dataset.n_test=32", "--epochs", "1",
    "--eval-n", "32", "--eval-steps", "1", "--batch-size", "32", "--device", "cpu", "--quiet",
)  # fmt: skip


class Payload:
    """A live pickle payload for tests that prove nothing is unpickled: unpickling it calls
    ``pathlib.Path.touch(marker)``, where any other code could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def torch_pickle(path: Path, marker: Path, key: str = "weight") -> Path:
    """A ``torch.save`` file (zip + pickle) whose "state dict" carries a :class:`Payload` under ``key``."""
    import torch

    torch.save({key: Payload(marker)}, path)
    return path


def raw_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle of a :class:`Payload`."""
    import pickle

    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Assert a command ended with exit code 2 and exactly one stderr line ``error: ...`` holding every needle."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@dataclass(frozen=True)
class FakeEntryPoint:
    """An ``energyat`` entry point of a distribution that is not installed (its module is importable
    from a folder the test adds to ``sys.path``), for tests of plugin loading."""

    name: str
    value: str
    dist: Any
    group: str = "energyat"

    def load(self) -> Any:
        import importlib

        return importlib.import_module(self.value)
