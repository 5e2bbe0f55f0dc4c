"""One error type for everything a user can get wrong.

Every message names the problem and the fix on one line, so the CLI can print it
as ``error: <problem> — <fix>`` without a traceback.
"""

from __future__ import annotations


class EnergyATError(Exception):
    """A user-facing error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ConfigError(EnergyATError):
    """An unknown component or option, or a value of the wrong type."""


class DataError(EnergyATError):
    """A dataset that is missing, malformed or does not match the run."""


class CheckpointError(EnergyATError):
    """A checkpoint file that is corrupt, not safetensors, or does not fit the model."""


class RunDirError(EnergyATError):
    """An output directory that already holds another run."""


class NonFiniteError(EnergyATError):
    """Training produced a NaN or infinite loss or energy; the run stopped."""


# -- the CLI's error boundary -------------------------------------------------------------
#: how a one-line error of an unexpected exception points to the traceback
DEBUG_HINT = "run `energyat --debug COMMAND ...` (or set ENERGYAT_DEBUG=1) for the traceback"

_SPACE_FIX = (
    "free some disk space or write elsewhere (--out DIR), then run again; "
    "`energyat train --resume RUN_DIR` continues a run from its last checkpoint"
)


def as_user_error(err: BaseException) -> EnergyATError:
    """The one-line form of whatever a command ended with: the CLI's single translation point.

    :class:`EnergyATError` stays as it is. Other exceptions are translated by type: an
    ``OSError`` by its errno, naming its path (disk full, read-only file system, permission
    denied, missing file...); a JSON or TOML syntax error, naming the file when the
    traceback holds its path; PIL's unreadable-image and decompression-bomb errors; running
    out of memory. Anything else (a ``ValueError`` or ``RuntimeError`` from torch on bad
    numbers, a plugin's bug) keeps the first line of its message, where it was raised, and
    how to see the traceback.
    """
    if isinstance(err, EnergyATError):
        return err
    image = _image_error(err)
    if image is not None:
        return image
    if isinstance(err, OSError):
        return _os_error(err)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":  # torch's, without importing it
        return EnergyATError(
            f"out of memory ({first_line(err) or type(err).__name__})",
            "lower --batch-size (or the evaluation's), or use --precision bf16",
        )
    syntax = _syntax_error(err)
    if syntax is not None:
        return syntax
    os_text = _os_error_in_text(err)
    if os_text is not None:
        return os_text
    where = _where(err)
    if isinstance(err, (ValueError, RuntimeError, ArithmeticError)):
        return EnergyATError(f"{first_line(err) or type(err).__name__} ({type(err).__name__}{where})", DEBUG_HINT)
    return EnergyATError(
        f"unexpected {type(err).__name__}{where}: {first_line(err)}", f"this is probably a bug: {DEBUG_HINT}"
    )


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message, stripped ("" if there is none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _frames(err: BaseException):
    """The frames of ``err``'s traceback, innermost first."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return reversed(frames)


#: libraries whose frames are not where a user's or plugin's problem lies (besides the standard library)
_LIBRARIES = {"torch", "torchvision", "numpy", "PIL", "safetensors", "timm", "typer", "click", "rich", "pluggy"}


def _where(err: BaseException) -> str:
    """`` in file.py:LINE``: the innermost frame of energyat or a plugin (not of a library), else the innermost."""
    import os
    import sys

    frames = list(_frames(err))
    if not frames:
        return ""
    skip = _LIBRARIES | set(sys.stdlib_module_names)
    ours = [tb for tb in frames if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] not in skip]
    tb = (ours or frames)[0]
    return f" in {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


def _path_in_traceback(err: BaseException) -> str | None:
    """The path a failed reader was reading: a ``Path`` among the locals of the innermost frame that has one
    (one with a suffix, a file, before a folder)."""
    from pathlib import PurePath

    for tb in _frames(err):
        paths = [v for v in tb.tb_frame.f_locals.values() if isinstance(v, PurePath)]
        if paths:
            return str(next((p for p in paths if p.suffix), paths[0]))
    return None


def _os_error(err: OSError) -> EnergyATError:
    import errno

    path = err.filename if err.filename is not None else err.filename2
    at = f" {path}" if path is not None else ""
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return EnergyATError(f"{what}{' writing' + at if at else ''}", _SPACE_FIX)
    if code == errno.EROFS:
        return EnergyATError(
            f"read-only file system{':' + at if at else ''}", "write somewhere writable, e.g. --out DIR on another disk"
        )
    if code in (errno.EACCES, errno.EPERM):
        return EnergyATError(
            f"permission denied{':' + at if at else ''}",
            "give yourself access to it (chmod/chown) or use a path you can write, e.g. --out DIR",
        )
    if code == errno.ENOENT:
        return EnergyATError(f"no such file or directory{':' + at if at else ''}", "check the path")
    if code == errno.EISDIR:
        return EnergyATError(f"{path or 'the path'} is a directory, a file was expected", "give the path of a file")
    if code == errno.ENOTDIR:
        return EnergyATError(f"a part of {path or 'the path'} is a file, not a directory", "check the path")
    if code == errno.EEXIST:
        return EnergyATError(f"{path or 'the path'} already exists", "choose another path, or remove it")
    if code in (errno.EMFILE, errno.ENFILE):
        return EnergyATError("too many open files", "raise the limit (ulimit -n) or use fewer data-loading workers")
    if code == errno.ENAMETOOLONG:
        return EnergyATError(f"file name too long:{at}", "use a shorter path")
    if code == errno.EIO:
        return EnergyATError(f"input/output error{':' + at if at else ''}", "check the disk (dmesg), then run again")
    reason = err.strerror or first_line(err) or type(err).__name__
    return EnergyATError(f"{reason}{':' + at if at else ''} ({type(err).__name__}{_where(err)})", DEBUG_HINT)


def _os_error_in_text(err: BaseException) -> EnergyATError | None:
    """A disk-full or read-only error that a library (safetensors' Rust writer, say) reports as text."""
    import errno
    import os

    text = str(err)
    for code in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)):
        if any(s in text for s in (os.strerror(code), f"os error {code})", f"code: {code}, kind:")):
            translated = _os_error(OSError(code, os.strerror(code), _path_in_traceback(err)))
            return EnergyATError(translated.problem + f" ({type(err).__name__}{_where(err)})", translated.fix)
    return None


def _syntax_error(err: BaseException) -> EnergyATError | None:
    """A JSON, TOML or UTF-8 error in a file energyat read."""
    import json
    import sys

    tomllib = sys.modules.get("tomllib")  # Python >= 3.11, and only if something read TOML
    if isinstance(err, json.JSONDecodeError):
        what = f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    elif tomllib is not None and isinstance(err, tomllib.TOMLDecodeError):
        what = f"invalid TOML ({first_line(err)})"
    elif isinstance(err, UnicodeDecodeError):
        what = f"not UTF-8 text ({err.reason} at byte {err.start})"
    else:
        return None
    path = _path_in_traceback(err)
    if path is None:
        return EnergyATError(f"{what} in a file energyat read", f"to see which: {DEBUG_HINT}")
    return EnergyATError(
        f"{path}: {what}", "fix the file or restore it; files of a run directory are written only by energyat"
    )


def _image_error(err: BaseException) -> EnergyATError | None:
    """PIL's errors for an unreadable image and for a decompression bomb (error or warning)."""
    import sys

    image = sys.modules.get("PIL.Image")
    if image is None:  # PIL was never imported: the error cannot be one of its own
        return None
    if isinstance(err, (image.DecompressionBombError, image.DecompressionBombWarning)):
        path = _path_in_traceback(err)
        return DataError(
            f"image{' ' + path if path else ''} refused as a possible decompression bomb ({first_line(err)})",
            "remove the image or shrink it; open images this large only from sources you trust",
        )
    if isinstance(err, image.UnidentifiedImageError):
        return DataError(first_line(err), "remove or replace the file: it is not an image that PIL can read")
    return None
