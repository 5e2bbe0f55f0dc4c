"""The run directory: its files, who may write it, and how a run replaces another.

A run directory ``RUN`` holds::

    config.json              the run's config, in document form (``energyat train --config`` reads it back)
    metrics.jsonl            one JSON record per completed epoch
    model.safetensors        the weights after the last completed epoch (config in the metadata)
    model_best.safetensors   the weights of the epoch with the best per-epoch PGD accuracy
    state.safetensors        everything else a resume needs (see :mod:`energyat_core.training_state`)
    record.json              how the run was made, one entry per invocation (:mod:`energyat_core.run_record`)
    steps.csv, epochs.csv    live logs with ``--log csv``; ``tensorboard/`` with ``--log tensorboard``
                             (append-only, see :mod:`energyat_core.step_log`)

and what other commands and components add (``eval.json``, ``plots/``, samplers' caches).
Next to it, in the same parent folder, live for a while::

    .RUN.lock                the lock of the one process writing RUN (removed when it ends)
    .RUN.staging/            an ``--overwrite`` run until its first checkpoint
    .RUN.old/                the replaced run, for the moment of the swap

The rules:

- **One writer.** ``energyat train`` (and ``--resume``) holds an OS file lock
  (:class:`RunLock`, ``flock``) on ``.RUN.lock`` for as long as it runs; the OS drops it
  when the process dies, so no lock outlives its holder. A second writer stops with one
  line naming the holder's PID and host. Under torchrun only rank 0 locks and writes.
- **Nothing is lost before its replacement is proven.** ``--overwrite`` builds the new run
  in ``.RUN.staging`` (same parent, so renames are atomic) and swaps it in as a whole
  (:class:`Staging`) only once its first checkpoint is written: ``RUN`` -> ``.RUN.old``,
  ``.RUN.staging`` -> ``RUN``, then ``.RUN.old`` is removed. Until then ``RUN`` is
  untouched; a failure removes the staging directory.
- **No litter.** Every file is written to a ``*.tmp`` name and renamed into place
  (:func:`write_text_atomic`, :func:`energyat_core.checkpoint.atomic_save`).
  :func:`clean_leftovers`, run under the lock at every start, removes ``*.tmp`` files,
  a staging or old directory, and finishes a swap that a kill interrupted.
- **A checkpoint and its metrics line are committed together**: weights, metrics line,
  then the state file, which is the resume point (:mod:`energyat_core.training_state`);
  a resume drops the metrics lines after the state's epoch, and a torn last line.

(Over 300 lines for a reason: the rules above are one concern, and each is small.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
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
#: the files one run writes; a directory holding any of them holds a run
RUN_FILES = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, BEST_FILE)
#: the suffix of temporary files (:func:`temporary_path`), which a start removes
TMP_SUFFIX = ".tmp"


# -- places --------------------------------------------------------------------------------
def _beside(run_dir: Path, suffix: str) -> Path:
    """``PARENT/.NAME<suffix>`` for the real (symlink-resolved) run directory ``PARENT/NAME``."""
    real = Path(os.path.realpath(run_dir))
    if not real.name:
        raise RunDirError(f"'{run_dir}' cannot be a run directory", "name a folder, e.g. --out runs/my-run")
    return real.parent / f".{real.name}{suffix}"


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run directory (next to it, so that it outlives an ``--overwrite`` swap)."""
    return _beside(run_dir, ".lock")


def staging_path(run_dir: Path) -> Path:
    """Where an ``--overwrite`` run is written until its first checkpoint."""
    return _beside(run_dir, ".staging")


def old_path(run_dir: Path) -> Path:
    """Where the replaced run lies during the swap."""
    return _beside(run_dir, ".old")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run: any file a run writes."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def check_out(run_dir: Path) -> None:
    """``--out`` must name a folder (or nothing yet), not a file."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out '{run_dir}' is a file, not a run directory", "choose a folder name for --out")


# -- one writer ------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory: ``with RunLock(run_dir): ...``.

    ``flock`` on ``.RUN.lock``, which holds the holder's ``PID HOST``. The file is removed
    on release while still locked; a process that opened it just before and then gets the
    lock on the removed file sees that the path now names another file and tries again.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise RunDirError(
                    f"cannot create the lock file '{self.path}' of run directory '{self.run_dir}' ({err.strerror})",
                    "choose an --out in a folder you can write to",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirError(
                    f"run directory '{self.run_dir}' is being written by another energyat process ({holder})",
                    "wait for it to end or stop it; one run directory has one writer at a time",
                ) from None
            try:
                mine = os.stat(self.path)
                current = os.fstat(fd)
                if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the previous holder removed this file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """``PID 123 on host gpu1`` from a lock file, as well as it can be read."""
    try:
        pid, host = os.pread(fd, 256, 0).decode(errors="replace").split()[:2]
    except (OSError, ValueError):
        return "its PID is not recorded yet"
    return f"PID {pid} on host {host}"


# -- no litter --------------------------------------------------------------------------------
def clean_leftovers(run_dir: Path) -> None:
    """Undo what a killed writer left (call it holding the lock): finish an interrupted swap,
    remove a staging or old directory and ``*.tmp`` files."""
    staging, old = staging_path(run_dir), old_path(run_dir)
    real = Path(os.path.realpath(run_dir))
    if not real.exists() and old.is_dir():
        # killed between the two renames of a swap: the new run had its checkpoint, so finish it
        os.rename(staging if (staging / STATE_FILE).is_file() else old, real)
    for leftover in (staging, old):
        if leftover.is_dir():
            shutil.rmtree(leftover)
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            if path.name.endswith(TMP_SUFFIX) and path.is_file():
                path.unlink()


def temporary_path(path: Path) -> Path:
    """A fresh temporary name next to ``path``: ``.NAME.PID-RANDOM.tmp``."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` via a temporary file and a rename: a kill leaves the old or the new text."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- replacing a run ---------------------------------------------------------------------------
class Staging:
    """The new run of an ``--overwrite``, written next to the old one until its first checkpoint."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)  # the run directory it replaces
        self.path = staging_path(self.target)
        self.committed = False

    def begin(self) -> None:
        """An empty staging directory."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()

    def commit(self) -> None:
        """Swap the staging directory in for the old run (its files, eval.json, plots... all of it)."""
        old = old_path(self.target)
        real = Path(os.path.realpath(self.target))
        if real.exists():
            os.rename(real, old)
        os.rename(self.path, real)
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staging directory of a run that failed before its first checkpoint
        (and put the old run back if a Ctrl-C came between the two renames of the swap)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
            clean_leftovers(self.target)


def _document(cfg: RunConfig) -> dict[str, Any]:
    """``cfg.to_dict()`` with JSON types only (as it reads back from ``config.json``)."""
    return json.loads(json.dumps(cfg.to_dict()))


def prepare_run_dir(run_dir: Path, cfg: RunConfig, *, overwrite: bool) -> Staging | None:
    """Where a new run goes: ``None`` (into ``run_dir`` itself, which holds no run) or a
    :class:`Staging` that replaces the run there (``--overwrite``); refuse to mix two runs."""
    check_out(run_dir)
    if not holds_run(run_dir):
        return None
    if overwrite:
        return Staging(run_dir)
    try:
        same = json.loads((run_dir / CONFIG_FILE).read_text()) == _document(cfg)
    except (OSError, ValueError):
        same = False
    what = "this run already" if same else "a different run"
    raise RunDirError(
        f"output directory '{run_dir}' already holds {what}",
        "pass --resume to continue it, --overwrite to replace it, or choose another --out",
    )


# -- plain-text files -----------------------------------------------------------------------------
def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """Write ``config.json`` (creating the directory)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(_document(cfg), indent=2) + "\n")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one epoch's record to ``metrics.jsonl`` (flushed to disk before the state file names the epoch)."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _records(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The lines of a metrics file with their records, and whether the file is as appends leave it
    (``False`` after a kill mid-append: a torn last line, or one without its newline)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"cannot read '{path}' ({err})", "restore the file or start the run anew") from None
    lines = text.split("\n")
    records: list[tuple[str, dict[str, Any]]] = []
    intact = not text or text.endswith("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            if number == len(lines):  # no newline after it: the append was cut short
                continue
            raise RunDirError(
                f"line {number} of '{path}' is not an epoch record",
                "restore the file, or delete that line (a resume writes the missing epochs again)",
            )
        records.append((line, record))
    return records, intact


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl`` (a torn last line is left out)."""
    return [record for _, record in _records(Path(run_dir) / METRICS_FILE)[0]]


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Keep the records of epochs up to ``epoch`` (the resume point's): drop later ones and a torn last line."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    records, intact = _records(path)
    keep = [line for line, record in records if record["epoch"] <= epoch]
    if not intact or len(keep) != len(records):
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def checkpoint_path(run_dir: Path, which: str = "model") -> Path:
    """``model`` (last epoch) or ``best`` (best per-epoch PGD accuracy)."""
    if which not in ("model", "best"):
        raise CheckpointError(f"unknown checkpoint '{which}'", "use --checkpoint model or --checkpoint best")
    return run_dir / (MODEL_FILE if which == "model" else BEST_FILE)
