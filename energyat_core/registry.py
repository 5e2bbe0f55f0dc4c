"""The component registry: names -> component classes, for every kind.

Listing, describing and creating components all go through one :class:`Registry`::

    from energyat_core.registry import get_registry
    attack = get_registry().create("attack", "pgd", steps=7)

``create`` validates the options against the component's ``Config`` dataclass. A name
may carry its first option after a colon: ``create("backbone", "timm:resnet18")``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from energyat_core.components import KINDS, Component
from energyat_core.config import build_config, first_field
from energyat_core.errors import ConfigError
from energyat_core.plugins import PluginInfo, call_per_plugin, disabled_names, load_plugins

HOOK_OF_KIND = {
    "attack": "register_attacks",
    "loss": "register_losses",
    "weighter": "register_weighters",
    "sampler": "register_samplers",
    "backbone": "register_backbones",
    "dataset": "register_datasets",
    "source": "register_sources",
    "evaluator": "register_evaluators",
}

#: where a first-party component lives, for the "not installed" hint
FIRST_PARTY = {
    ("attack", "pgd"): "energyat-pgd",
    ("attack", "fgsm"): "energyat-pgd",
    ("attack", "fgsm-rs"): "energyat-pgd",
    ("attack", "fgsm-sdi"): "energyat-fgsm-sdi",
    ("loss", "trades"): "energyat-trades",
    ("loss", "bridged"): "energyat-bridged",
    ("loss", "jeat"): "energyat-jeat",
    ("weighter", "energy"): "energyat-weat",
    ("sampler", "sgld"): "energyat-sgld",
    ("evaluator", "autoattack"): "energyat-autoattack",
    ("source", "proxy"): "energyat-proxy",
    ("method", "pgd-at"): "energyat-pgd",
    ("method", "fgsm-rs"): "energyat-pgd",
    ("method", "trades"): "energyat-trades",
    ("method", "bat"): "energyat-bridged",
    ("method", "weat"): "energyat-weat",
    ("method", "fgsm-sdi"): "energyat-fgsm-sdi",
    ("method", "jeat"): "energyat-jeat",
}


@dataclass(frozen=True)
class Entry:
    """A registered component: its kind, name, class and the plugin that provides it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """All components, method presets and plugin reports of this installation."""

    def __init__(self, disabled: set[str] | None = None) -> None:
        self.pm, self.plugins = load_plugins(disabled)
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.methods: dict[str, Any] = {}
        self.method_plugin: dict[str, str] = {}
        for kind, hook in HOOK_OF_KIND.items():
            call_per_plugin(
                self.pm, hook, self.plugins, lambda info, kind=kind: {"register": self._registrar(kind, info)}
            )
        call_per_plugin(
            self.pm, "register_methods", self.plugins, lambda info: {"register": self._method_registrar(info)}
        )

    # -- registration ---------------------------------------------------------------
    def _registrar(self, kind: str, info: PluginInfo):
        base = KINDS[kind]

        def register(name: str, cls: type[Component]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                info.errors.append(f"{kind} '{name}' is not a subclass of {base.__name__}; skipped")
                return
            if name in self.entries[kind]:
                other = self.entries[kind][name].plugin
                info.errors.append(f"{kind} '{name}' is already registered by '{other}'; skipped")
                return
            self.entries[kind][name] = Entry(kind, name, cls, info.name)
            info.registered.append(f"{kind}:{name}")

        return register

    def _method_registrar(self, info: PluginInfo):
        def register(method: Any) -> None:
            if method.name in self.methods:
                info.errors.append(
                    f"method '{method.name}' is already registered by '{self.method_plugin[method.name]}'; skipped"
                )
                return
            self.methods[method.name] = method
            self.method_plugin[method.name] = info.name
            info.registered.append(f"method:{method.name}")

        return register

    # -- lookup -----------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self.entries[kind])

    def _check_kind(self, kind: str) -> None:
        if kind not in self.entries and kind != "method":
            raise ConfigError(f"unknown component kind '{kind}'", f"use one of: {', '.join([*KINDS, 'method'])}")

    def _missing(self, kind: str, name: str, known: list[str]) -> ConfigError:
        dist = FIRST_PARTY.get((kind, name))
        hint = f"install it with `pip install {dist}`" if dist else f"available: {', '.join(known) or 'none'}"
        failed = [p.name for p in self.plugins if p.errors]
        if failed and not dist:
            hint += f" (plugins that failed to load: {', '.join(failed)}; see `energyat plugins`)"
        return ConfigError(f"unknown {kind} '{name}'", hint)

    def get(self, kind: str, name: str) -> Entry:
        """The entry of ``name`` (a ``name:value`` spec is accepted)."""
        self._check_kind(kind)
        base_name = name.split(":", 1)[0]
        if base_name not in self.entries[kind]:
            raise self._missing(kind, base_name, self.names(kind))
        return self.entries[kind][base_name]

    def method(self, name: str):
        if name not in self.methods:
            raise self._missing("method", name, sorted(self.methods))
        return self.methods[name]

    def split_spec(self, kind: str, spec: str, options: dict[str, Any] | None = None) -> tuple[Entry, dict[str, Any]]:
        """Resolve ``name[:value]`` to its entry and the options including that value."""
        entry = self.get(kind, spec)
        options = dict(options or {})
        if ":" in spec:
            value = spec.split(":", 1)[1]
            key = first_field(entry.cls.Config)
            if key is None:
                raise ConfigError(f"{kind} '{entry.name}' takes no value after ':'", f"use plain '{entry.name}'")
            options.setdefault(key, value)
        return entry, options

    def create(self, kind: str, spec: str, **options: Any) -> Component:
        """Build a component, validating its options against its ``Config``."""
        entry, options = self.split_spec(kind, spec, options)
        config = build_config(entry.cls.Config, options, f"{kind} '{entry.name}'")
        component = entry.cls(config)
        component.name = entry.name
        return component


@functools.lru_cache(maxsize=8)
def _cached(disabled: frozenset[str]) -> Registry:
    return Registry(set(disabled))


#: plugins disabled for the current command (``--disable-plugins``); set by the CLI's ``main``
_command_disable: str | None = None


@contextlib.contextmanager
def disabled_for_command(disable: str | None) -> Iterator[None]:
    """Within the block, :func:`get_registry` leaves out ``disable`` (comma-separated names) too."""
    global _command_disable
    previous, _command_disable = _command_disable, disable
    try:
        yield
    finally:
        _command_disable = previous


def get_registry(disable: str | None = None) -> Registry:
    """The registry of this installation (built once per set of disabled plugins).

    Leaves out the plugins named in ``disable``, in ``ENERGYAT_DISABLE_PLUGINS`` and, while a
    CLI command runs, in its ``--disable-plugins`` flag.
    """
    names = ",".join(x for x in (disable, _command_disable) if x)
    return _cached(frozenset(disabled_names(names or None)))
