"""One error boundary: every command ends with its result or one line ``error: problem — fix``.

Each test drives the real CLI in-process (the ``cli`` fixture): broken and colliding plugins,
file-system failures, bad JSON, an evaluator's ``ValueError``, and ``--debug``.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from energyat_core import plugins as plugins_mod
from energyat_core import registry as registry_mod
from energyat_core.errors import DataError, EnergyATError, as_user_error
from energyat_core.testing import FakeEntryPoint
from energyat_core.testing import assert_one_line_error as one_line_error

TINY = (
    *("--backbone", "small_cnn", "--dataset", "synthetic", "--set", "dataset.n_train=64"),
    *("--set", "dataset.n_test=32", "--eval-n", "32", "--eval-steps", "1", "--epochs", "1"),
    *("--batch-size", "32", "--device", "cpu", "--quiet"),
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (one epoch of 64 synthetic images on CPU)."""
    from energyat_core.testing import run_cli

    out = tmp_path_factory.mktemp("errors") / "run"
    assert run_cli("train", *TINY, "--out", out) == 0
    return out


# -- plugins -------------------------------------------------------------------------------------
@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """``plugins(**{module: source})``: install exactly these fake plugins (plus the example one,
    counted as first-party) for the CLI, each from distribution ``<module>-dist``."""
    real = [ep for ep in plugins_mod.metadata.entry_points(group="energyat") if ep.dist is not None]
    example = [ep for ep in real if ep.dist.name == "energyat-example-plugin"]
    monkeypatch.syspath_prepend(str(tmp_path))
    registry_mod._cached.cache_clear()

    def install(**sources: str) -> None:
        eps = []
        for name, source in sources.items():
            (tmp_path / f"{name}.py").write_text(source)
            sys.modules.pop(name, None)
            eps.append(FakeEntryPoint(name, name, SimpleNamespace(name=f"{name}-dist", version="1.0")))
        monkeypatch.setattr(
            plugins_mod.metadata, "entry_points", lambda group: [*example, *eps] if group == "energyat" else []
        )
        monkeypatch.setattr(plugins_mod, "first_party_distributions", lambda: frozenset({"energyat-example-plugin"}))
        registry_mod._cached.cache_clear()

    yield install
    registry_mod._cached.cache_clear()


def test_a_plugin_calling_sys_exit_at_import_is_listed_as_failed(cli, plugins, monkeypatch):
    plugins(exit_plug="import sys\nsys.exit('bye')\n")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli("plugins")
    assert code == 0 and "failed" in out
    assert "exit_plug (exit_plug-dist): SystemExit: the plugin called sys.exit('bye') (exit_plug.py:2)" in out
    code, out, err = cli("describe", "attack", "noise")  # every other command goes on
    assert code == 0, err
    code, _, err = cli("describe", "attack", "from-exit-plug")
    one_line_error(code, err, "unknown attack 'from-exit-plug'", "plugins that failed to load: exit_plug")


def test_a_third_party_plugin_cannot_take_a_first_party_name(cli, plugins, monkeypatch):
    register = (
        "from energyat_core import hookimpl\nfrom energyat_core.core_plugin import NoAttack\n"
        "@hookimpl(tryfirst=True)\ndef register_attacks(register):\n    register({names})\n"
    )
    plugins(
        aaa_thief=register.format(names="'noise', NoAttack"),
        one_twin=register.format(names="'twin', NoAttack"),
        two_twin=register.format(names="'twin', NoAttack"),
    )
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli("plugins")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith("aaa_thief")]  # one line, not cut at 80
    assert line == (
        "aaa_thief (aaa_thief-dist): attack 'noise' is also claimed by 'example' (energyat-example-plugin, "
        "first-party), which keeps it; skipped in aaa_thief-dist — rename it there, or uninstall one of the two"
    )
    code, out, _ = cli("describe", "attack", "noise")
    assert code == 0 and "(plugin example)" in out  # the first-party one stays usable
    code, _, err = cli("describe", "attack", "twin")  # two third parties: neither, and a clear error
    one_line_error(code, err, "attack 'twin' is claimed by", "one_twin-dist", "two_twin-dist", "--disable-plugins")


_EXPLODING_EVALUATOR = """
from energyat_core import hookimpl
from energyat_core.api import Evaluator


class Explode(Evaluator):
    \"\"\"Raises the way torch does on bad numbers.\"\"\"

    def run(self, model, x, y, *, eps, norm, batch_size):
        raise ValueError("step size must be finite, got nan\\nsecond line of the message")


@hookimpl
def register_evaluators(register):
    register("explode", Explode)
"""


def test_a_value_error_from_an_evaluator_is_one_line(cli, plugins, run):
    plugins(explode_plug=_EXPLODING_EVALUATOR)
    code, _, err = cli("eval", run, "--evaluator", "explode", "--n", "8", "--no-sanity", "--out", run / "x.json")
    line = one_line_error(code, err, "step size must be finite, got nan (ValueError in explode_plug.py:", "--debug")
    assert "second line" not in line and not (run / "x.json").exists()


def test_debug_shows_the_traceback(cli, plugins, run, monkeypatch):
    plugins(explode_plug=_EXPLODING_EVALUATOR)
    args = ("eval", run, "--evaluator", "explode", "--n", "8", "--no-sanity")
    with pytest.raises(ValueError, match="step size must be finite"):  # let through: Python prints the traceback
        cli("--debug", *args)
    monkeypatch.setenv("ENERGYAT_DEBUG", "1")
    with pytest.raises(ValueError, match="step size must be finite"):
        cli(*args)
    monkeypatch.delenv("ENERGYAT_DEBUG")
    code, _, err = cli(*args)
    one_line_error(code, err, "step size must be finite")


# -- the file system -------------------------------------------------------------------------------
def fail_writes(monkeypatch, under: Path, code: int) -> None:
    """Make every write (open for writing, os.open with a write flag) below ``under`` fail with ``code``."""
    real_open, real_os_open = builtins.open, os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(str(under) + os.sep)

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writing:
            raise OSError(code, os.strerror(code), str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="chmod does not stop root")
def test_a_read_only_run_directory_is_one_line(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = cli("train", *TINY, "--out", out)
    finally:
        out.chmod(0o755)
    one_line_error(code, err, "permission denied", str(out), "--out DIR")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "needles"),
    [
        (errno.EROFS, ("read-only file system", "write somewhere writable")),
        (errno.ENOSPC, ("no space left on the device writing", "free some disk space", "--resume")),
        (errno.EACCES, ("permission denied",)),
    ],
)
def test_write_failures_are_one_line(cli, tmp_path, monkeypatch, code, needles):
    out = tmp_path / "run"  # the lock file beside it can be written: the failure is in the run directory
    fail_writes(monkeypatch, out, code)
    status, _, err = cli("train", *TINY, "--out", out)
    one_line_error(status, err, *needles, str(out))


# -- bad JSON ------------------------------------------------------------------------------------
def test_bad_json_in_a_config_file(cli, tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text('{"epochs": 1,')
    code, _, err = cli("train", "--config", bad, *TINY, "--out", tmp_path / "r")
    one_line_error(code, err, "run.json")
    assert not (tmp_path / "r").exists()


# -- the translation itself (no CLI needed) ------------------------------------------------------------
def _raised(err: BaseException) -> BaseException:
    try:
        raise err
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_translation_of_library_errors(tmp_path):
    from PIL import Image, UnidentifiedImageError

    def reader(path: Path):
        return json.loads(path.read_text())

    path = tmp_path / "state.json"
    path.write_text("{")
    try:
        reader(path)
    except ValueError as err:
        line = as_user_error(err).line()
    assert line.startswith(f"{path}: invalid JSON (Expecting property name") and "restore it" in line
    assert "invalid JSON" in as_user_error(_raised(json.JSONDecodeError("x", "{", 0))).line()  # file unknown

    bomb = as_user_error(_raised(Image.DecompressionBombWarning("Image size (1 pixels) exceeds limit")))
    assert isinstance(bomb, DataError) and "decompression bomb" in bomb.problem
    unreadable = as_user_error(_raised(UnidentifiedImageError("cannot identify image file 'a.png'")))
    assert unreadable.line().startswith("cannot identify image file 'a.png' — remove or replace")

    assert as_user_error(_raised(IsADirectoryError(errno.EISDIR, "Is a directory", "out"))).problem == (
        "out is a directory, a file was expected"
    )
    kept = EnergyATError("a problem", "a fix")
    assert as_user_error(kept) is kept
    bug = as_user_error(_raised(KeyError("x"))).line()
    assert bug.startswith("unexpected KeyError in test_errors.py:") and "probably a bug" in bug


def test_disk_full_reported_as_text_by_a_library():
    err = _raised(RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "x" })'))
    line = as_user_error(err).line()
    assert line.startswith("no space left on the device (RuntimeError in test_errors.py:") and "free some" in line
