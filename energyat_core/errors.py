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
