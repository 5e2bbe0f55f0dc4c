"""The run directory: the names of its files, and the files that are plain text.

A run directory holds::

    config.json              the run's config, in document form (``energyat train --config`` reads it back)
    metrics.jsonl            one JSON record per completed epoch
    model.safetensors        the weights after the last completed epoch (config in the metadata)
    model_best.safetensors   the weights of the epoch with the best per-epoch PGD accuracy
    state.safetensors        everything else a resume needs (see :mod:`energyat_core.checkpointing`)

Only rank 0 of a distributed run writes here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from energyat_core.errors import CheckpointError, RunDirError

if TYPE_CHECKING:
    from energyat_core.run_config import RunConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
BEST_FILE = "model_best.safetensors"
STATE_FILE = "state.safetensors"
#: the files one run writes, all removed by ``--overwrite``
RUN_FILES = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, BEST_FILE)


def _document(cfg: RunConfig) -> dict[str, Any]:
    """``cfg.to_dict()`` with JSON types only (as it reads back from ``config.json``)."""
    return json.loads(json.dumps(cfg.to_dict()))


def prepare_run_dir(run_dir: Path, cfg: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory unless ``--resume`` or ``--overwrite``."""
    config_path = run_dir / CONFIG_FILE
    if resume or not config_path.exists():
        return
    if overwrite:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        return
    try:
        same = json.loads(config_path.read_text()) == _document(cfg)
    except (OSError, json.JSONDecodeError):
        same = False
    what = "this run already" if same else "a different run"
    raise RunDirError(
        f"output directory '{run_dir}' already holds {what}",
        "pass --resume to continue it, --overwrite to replace it, or choose another --out",
    )


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """Write ``config.json`` (creating the directory)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(_document(cfg), indent=2) + "\n")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one epoch's record to ``metrics.jsonl``."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Drop the records of epochs after ``epoch`` (written by a run killed after its last checkpoint)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= epoch]
    path.write_text("".join(line + "\n" for line in keep))


def checkpoint_path(run_dir: Path, which: str = "model") -> Path:
    """``model`` (last epoch) or ``best`` (best per-epoch PGD accuracy)."""
    if which not in ("model", "best"):
        raise CheckpointError(f"unknown checkpoint '{which}'", "use --checkpoint model or --checkpoint best")
    return run_dir / (MODEL_FILE if which == "model" else BEST_FILE)
