"""Typed options: the one place a setting is declared, and the one place it is validated.

A component's ``Config`` (and :class:`~energyat_core.run_config.RunConfig`) is a dataclass
whose fields are declared with :func:`option`: default, help text and, where they apply,
bounds (``ge``/``gt``/``le``/``lt``) and ``choices``. Everything else is derived from that
declaration: the ``energyat train`` flags, ``--set``, TOML and config.json keys, the
``energyat describe`` tables and the validation below.

:func:`build_config` turns user input (strings from the command line, or values from a
TOML/JSON file or Python) into the dataclass: it checks names, converts types, applies the
bounds of every field and finally the dataclass's own ``check()`` (cross-field rules), and
raises a one-line :class:`~energyat_core.errors.ConfigError` otherwise. It is the only
validator: configs are built once, and components receive the built object.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from fractions import Fraction
from typing import Any, Literal, Union

from energyat_core.errors import ConfigError


def option(
    default: Any,
    help: str,  # noqa: A002 - "help" is the natural name
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare a setting: its default, the help text ``energyat describe`` shows, and its bounds.

    ``ge``/``gt``/``le``/``lt`` bound a number (each item of a list); ``choices`` lists the
    allowed values (a ``Literal`` annotation does the same). ``None`` is always allowed
    where the annotation allows it.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_RULES = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
)


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def rule_text(f: dataclasses.Field) -> str:
    """The bounds of a field as text, e.g. ``>= 1`` or ``>= 0, < 1`` (empty if none)."""
    parts = [f"{sym} {_fmt(f.metadata[key])}" for key, sym, _ in _RULES if f.metadata.get(key) is not None]
    if f.metadata.get("choices"):
        parts.append("one of " + ", ".join(str(c) for c in f.metadata["choices"]))
    return ", ".join(parts)


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Raise ``ValueError`` if ``value`` breaks the bounds or choices declared for ``f``."""
    if value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        choices = f.metadata.get("choices")
        if choices and item not in choices:
            raise ValueError(f"must be {rule_text(f)}")
        for key, _, ok in _RULES:
            bound = f.metadata.get(key)
            if bound is not None and isinstance(item, (int, float)) and not ok(item, bound):
                raise ValueError(f"must be {rule_text(f)}")


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


def build_config(config_cls: type, options: dict[str, Any], what: str, flag: str = "--set {}") -> Any:
    """Build ``config_cls`` from ``options``, validating every name and value, once.

    ``what`` names the owner in messages (``"attack 'pgd'"``); ``flag`` shows how the user
    sets an option (``"--set attack.{}"`` for a component, ``"--{}"`` for a run setting).
    Checks, in order: the name exists, the value converts to the field's type, the
    field's bounds/choices hold, and the config's own ``check()`` (cross-field rules)
    passes. Any failure is one :class:`ConfigError` line.
    """
    hints = resolved_types(config_cls)
    fields = {f.name: f for f in fields_of(config_cls)}

    def how(name: str, example: Any) -> str:
        return flag.format(name.replace("_", "-") if flag.startswith("--{") else name) + f"={example}"

    values: dict[str, Any] = {}
    for key, raw in options.items():
        name = key.replace("-", "_")
        if name not in fields:
            listing = ", ".join(fields) if fields else "none"
            raise ConfigError(f"{what} has no option '{key}'", f"valid options: {listing} (see `energyat describe`)")
        tp = hints[name]
        try:
            values[name] = coerce(raw, tp)
        except (ValueError, TypeError, ZeroDivisionError):
            raise ConfigError(
                f"{what} option '{name}' expects {type_name(tp)}, got {raw!r}",
                f"pass {type_name(tp)}, e.g. {how(name, '<value>')}",
            ) from None
        try:
            check_field(fields[name], values[name])
        except ValueError as err:
            raise ConfigError(
                f"{what} option '{name}' {err}, got {raw!r}", f"e.g. {how(name, _default_text(fields[name]))}"
            ) from None
    try:
        config = config_cls(**values)
        check = getattr(config, "check", None)
        if callable(check):
            check()
    except (ValueError, TypeError) as err:  # cross-field rules of the config itself
        raise ConfigError(f"{what}: {err}", "fix the option value") from None
    return config


def _default_text(f: dataclasses.Field) -> str:
    """The declared default as a user would type it."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, (tuple, list)):
        return ",".join(str(v) for v in default)
    return "<value>" if default is None else str(default)


def plain_text(text: str) -> str:
    """Docstring text for a terminal: reStructuredText ````x```` and ``:role:`x``` as `x`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def display_value(value: Any) -> str:
    """A default as a user reads it: ``8/255`` for a radius such as 0.03137..., else ``repr``.

    A float in (0, 1] that is a multiple of 1/255 and no simpler fraction (its denominator
    has the factor 17 of 255) shows as ``k/255``; 0.2 (= 51/255) stays 0.2. Lists and tuples
    show item by item.
    """
    if isinstance(value, float) and 0 < value <= 1:
        frac = Fraction(value).limit_denominator(255)
        if abs(float(frac) - value) < 1e-12 and frac.denominator % 17 == 0:
            return f"{frac.numerator * (255 // frac.denominator)}/255"
    if isinstance(value, (list, tuple)) and value:
        inner = ", ".join(display_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def describe_fields(config_cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of each option, for tables and docs."""
    hints = resolved_types(config_cls)
    rows = []
    for f in fields_of(config_cls):
        if "help" not in f.metadata:  # not a setting (e.g. RunConfig.parts)
            continue
        if f.default is not dataclasses.MISSING:
            shown = display_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            shown = display_value(f.default_factory())
        else:
            shown = repr("(required)")
        kind = type_name(hints[f.name])
        rule = rule_text(f)
        rows.append((f.name, f"{kind}, {rule}" if rule else kind, shown, plain_text(f.metadata.get("help", ""))))
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
