"""Bounds of command-level flags (those that are not run settings), declared with the flag."""

from __future__ import annotations

from collections.abc import Callable

from energyat_core.errors import ConfigError


def at_least(low: int, flag: str, example: int) -> Callable[[int | None], int | None]:
    """A Typer callback: a value below ``low`` is a one-line :class:`ConfigError`."""

    def check(value: int | None) -> int | None:
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}", f"e.g. {flag} {example}")
        return value

    return check
