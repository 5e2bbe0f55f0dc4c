"""The run record: how a run directory was made, one entry per invocation of ``energyat train``.

``RUN/record.json`` is written when a run starts and gets one more entry each time the run
is resumed (the earlier entries are kept), so that a run trained in several job slots, on
other machines or other versions, says so::

    {"invocations": [
      {"command": "train",            # or "resume"
       "started": "2026-01-31T12:00:00+00:00", "from_epoch": 0,
       "argv": ["energyat", "train", ...],
       "python": "3.12.3", "torch": "2.4.0", "energyat_core": "0.1.0",
       "plugins": [{"name": "core", "distribution": "energyat-core", "version": "0.1.0"}, ...],
       "git": {"commit": "0123abc...", "dirty": false},   # null unless energyat_core runs from a git checkout
       "host": "gpu1", "device": "NVIDIA H100 80GB HBM3"}  # or "cpu"
    ]}

The config itself is ``config.json`` (:mod:`energyat_core.run_dir`): every setting and every
component option, resolved and typed, in the form ``energyat train --config`` (and
``--from RUN``) reads. The record is written atomically; a resume tolerates a missing or
unreadable one (it starts a new history).
"""

from __future__ import annotations

import datetime
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from energyat_core import __version__
from energyat_core.run_dir import write_text_atomic

RECORD_FILE = "record.json"
#: seconds a ``git`` call may take before the commit is recorded as unknown
GIT_TIMEOUT = 10.0


def git_state(package_dir: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": SHA, "dirty": bool}`` when ``package_dir`` (energyat_core's parent folder)
    is the top of a git checkout; ``None`` otherwise, when git is missing, or on any failure."""
    if package_dir is None:
        package_dir = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(package_dir), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=True,
        )
        return done.stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if Path(top).resolve() != package_dir.resolve():  # an installed copy inside some other repository
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return {"commit": commit, "dirty": dirty}


def device_name(device: torch.device) -> str:
    """The CUDA device's name, or the device type (``cpu``)."""
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):
            return "cuda"
    return device.type


def invocation(plugins: list[Any], device: torch.device, *, resumed: bool, from_epoch: int) -> dict[str, Any]:
    """The entry of this invocation; ``plugins`` is the registry's :class:`~energyat_core.plugins.PluginInfo` list."""
    return {
        "command": "resume" if resumed else "train",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from_epoch": from_epoch,
        "argv": list(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "energyat_core": __version__,
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version} for p in plugins if p.loaded
        ],
        "git": git_state(),
        "host": socket.gethostname(),
        "device": device_name(device),
    }


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's record; an empty history when there is none or it cannot be read."""
    try:
        record = json.loads((Path(run_dir) / RECORD_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {"invocations": []}
    if not isinstance(record, dict) or not isinstance(record.get("invocations"), list):
        return {"invocations": []}
    return record


def record_invocation(
    run_dir: Path, plugins: list[Any], device: torch.device, *, resumed: bool, from_epoch: int
) -> None:
    """Add this invocation (:func:`invocation`) to the run's record, atomically; a new run
    (not ``resumed``) starts a new history."""
    record = read_record(run_dir) if resumed else {"invocations": []}
    record["invocations"].append(invocation(plugins, device, resumed=resumed, from_epoch=from_epoch))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / RECORD_FILE, json.dumps(record, indent=2) + "\n")
