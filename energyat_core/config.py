"""Typed options: component configs and their validation.

A component's ``Config`` is a dataclass; :func:`option` declares a field with its help
text. :func:`build_config` turns user input (strings from the command line, or values
from a TOML file or Python) into that dataclass, checking names and types, and raises a
:class:`~energyat_core.errors.ConfigError` that lists the valid choices otherwise.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from fractions import Fraction
from typing import Any, Literal, Union

from energyat_core.errors import ConfigError


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - "help" is the natural name
    """A config field with a default and the help text ``energyat describe`` shows."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def parse_number(text: str) -> float:
    """Parse ``0.1``, ``1e-3`` or a fraction such as ``8/255`` (no ``eval``)."""
    text = text.strip()
    if "/" in text:
        num, _, den = text.partition("/")
        return float(Fraction(num.strip()) / Fraction(den.strip()))
    return float(text)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def type_name(tp: Any) -> str:
    """How a type reads in an error message."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a comma-separated list of {type_name(args[0]) if args else 'values'}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to type ``tp``; raise ``ValueError`` if it does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            for c in choices:
                if str(c) == value.strip():
                    return c
        raise ValueError
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError:
                continue
        raise ValueError
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError
    if origin in (tuple, list):
        item_types = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = item_types[0] if item_types else Any
        parts: list[Any]
        if isinstance(value, str):
            parts = [p for p in value.replace(" ", "").split(",") if p]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise ValueError
        return origin(coerce(p, item) for p in parts)  # type: ignore[operator]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return parse_number(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if isinstance(value, tp):
        return value
    raise ValueError


def fields_of(config_cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config_cls))


def resolved_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def build_config(config_cls: type, options: dict[str, Any], what: str) -> Any:
    """Build ``config_cls`` from ``options``, validating every name and value.

    ``what`` names the component in messages, e.g. ``"attack 'pgd'"``.
    """
    hints = resolved_types(config_cls)
    valid = [f.name for f in fields_of(config_cls)]
    values: dict[str, Any] = {}
    for key, raw in options.items():
        name = key.replace("-", "_")
        if name not in valid:
            listing = ", ".join(valid) if valid else "none"
            raise ConfigError(
                f"{what} has no option '{key}'",
                f"valid options: {listing} (see `energyat describe`)",
            )
        tp = hints[name]
        try:
            values[name] = coerce(raw, tp)
        except (ValueError, TypeError, ZeroDivisionError):
            raise ConfigError(
                f"{what} option '{name}' expects {type_name(tp)}, got {raw!r}",
                f"pass {type_name(tp)}, e.g. --set {name}=<value>",
            ) from None
    try:
        return config_cls(**values)
    except (ValueError, TypeError) as err:  # __post_init__ checks of the component itself
        raise ConfigError(f"{what}: {err}", "fix the option value") from None


def describe_fields(config_cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of each option, for tables and docs."""
    hints = resolved_types(config_cls)
    rows = []
    for f in fields_of(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((f.name, type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))
    return rows


def first_field(config_cls: type) -> str | None:
    """The option that ``name:value`` on the command line sets."""
    fs = fields_of(config_cls)
    return fs[0].name if fs else None


def as_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-friendly values."""
    out = {}
    for k, v in dataclasses.asdict(config).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
