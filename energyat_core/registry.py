"""The component registry: names -> component classes, for every kind.

Listing, describing and creating components all go through one :class:`Registry`::

    from energyat_core.registry import get_registry
    attack = get_registry().create("attack", "pgd", steps=7)

``create`` validates the options against the component's ``Config`` dataclass (once:
:meth:`Registry.config` builds the config, :meth:`Registry.build` makes the component from
a built config). A name may carry its first option after a colon:
``create("backbone", "timm:resnet18")``. Which kinds exist, and which hook registers each,
comes from :data:`energyat_core.kinds.KINDS`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from energyat_core import catalog
from energyat_core.components import Component
from energyat_core.errors import ConfigError
from energyat_core.kinds import KIND, KINDS, kind_names
from energyat_core.methods import Method
from energyat_core.options import build_config, first_field
from energyat_core.plugins import PluginInfo, call_per_plugin, contested, disabled_names, load_plugins, settle


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
    """All components, method presets and plugin reports of this installation.

    Plugins register through their hooks; a name claimed by several plugins is settled
    after every hook has run, by rank and not by call order (see
    :mod:`energyat_core.plugins`): core, then first-party, keeps it; a tie among the
    highest rank leaves the name to nobody (listed in :attr:`contested`).
    """

    def __init__(self, disabled: set[str] | None = None) -> None:
        self.pm, self.plugins = load_plugins(disabled)
        self.entries: dict[str, dict[str, Entry]] = {kind.name: {} for kind in KINDS}
        self.methods: dict[str, Method] = {}
        self.method_plugin: dict[str, str] = {}
        #: (kind or "method", name) -> the plugins that claim it, when none of them got it
        self.contested: dict[tuple[str, str], list[PluginInfo]] = {}
        self._claims: dict[tuple[str, str], list[tuple[int, PluginInfo, Any]]] = {}
        self._seq = itertools.count()
        for kind in KINDS:
            call_per_plugin(
                self.pm, kind.hook, self.plugins, lambda info, k=kind.name: {"register": self._registrar(k, info)}
            )
        call_per_plugin(
            self.pm, "register_methods", self.plugins, lambda info: {"register": self._method_registrar(info)}
        )
        self._settle()

    # -- registration ---------------------------------------------------------------
    def _claim(self, kind: str, name: str, info: PluginInfo, value: Any) -> None:
        claims = self._claims.setdefault((kind, name), [])
        if any(other is info for _, other, _ in claims):
            info.errors.append(f"{kind} '{name}' is registered twice by this plugin; the first one is kept")
            return
        claims.append((next(self._seq), info, value))

    def _registrar(self, kind: str, info: PluginInfo):
        base = KIND[kind].base

        def register(name: str, cls: type[Component]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                info.errors.append(f"{kind} '{name}' is not a subclass of {base.__name__}; skipped")
                return
            self._claim(kind, name, info, cls)

        return register

    def _method_registrar(self, info: PluginInfo):
        def register(method: Method) -> None:
            if not isinstance(method, Method):
                info.errors.append(f"register_methods: {method!r} is not a Method; skipped")
                return
            self._claim("method", method.name, info, method)

        return register

    def _settle(self) -> None:
        """Give every claimed name to its plugin (:func:`~energyat_core.plugins.settle`)."""
        won: list[tuple[int, PluginInfo, str]] = []
        for (kind, name), claims in self._claims.items():
            claimants = [info for _, info, _ in claims]
            winner = settle(f"{kind} '{name}'", claimants)
            if winner is None:
                self.contested[(kind, name)] = claimants
                continue
            seq, _, value = next(c for c in claims if c[1] is winner)
            if kind == "method":
                self.methods[name] = value
                self.method_plugin[name] = winner.name
            else:
                self.entries[kind][name] = Entry(kind, name, value, winner.name)
            won.append((seq, winner, f"{kind}:{name}"))
        for _, info, item in sorted(won, key=lambda w: w[0]):  # each plugin's own order
            info.registered.append(item)

    # -- lookup -----------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self.entries[kind])

    def _check_kind(self, kind: str) -> None:
        if kind not in self.entries and kind != "method":
            raise ConfigError(f"unknown component kind '{kind}'", f"use one of: {kind_names('method')}")

    def _missing(self, kind: str, name: str, known: list[str]) -> ConfigError:
        if (kind, name) in self.contested:
            return ConfigError(*contested(f"{kind} '{name}'", self.contested[(kind, name)]))
        hint_of_catalog = catalog.missing_hint(kind, name, self.plugins)
        if hint_of_catalog is not None:
            problem, fix = hint_of_catalog
            return ConfigError(problem, f"{fix} (available now: {', '.join(known) or 'none'})")
        hint = f"available: {', '.join(known) or 'none'}; install the plugin that provides it"
        failed = [p.name for p in self.plugins if not p.loaded and not p.disabled]
        if failed:
            hint += f" (plugins that failed to load: {', '.join(failed)}; see `energyat plugins`)"
        return ConfigError(f"unknown {kind} '{name}'", hint)

    def get(self, kind: str, name: str) -> Entry:
        """The entry of ``name`` (a ``name:value`` spec is accepted)."""
        self._check_kind(kind)
        base_name = name.split(":", 1)[0]
        if base_name not in self.entries[kind]:
            raise self._missing(kind, base_name, self.names(kind))
        return self.entries[kind][base_name]

    def method(self, name: str, _seen: tuple[str, ...] = ()) -> Method:
        """The preset ``name``, with its ``based_on`` chain resolved."""
        if name not in self.methods:
            if _seen and ("method", name) not in self.contested:
                known = catalog.missing_hint("method", name, self.plugins)
                raise ConfigError(
                    f"method '{_seen[-1]}' is based on '{name}', which is not installed",
                    f"{known[0]}; {known[1]}"
                    if known
                    else "install the plugin that provides it (see the preset's plugin dependencies)",
                )
            raise self._missing("method", name, sorted(self.methods))
        method = self.methods[name]
        if method.based_on is None:
            return method
        if method.based_on in (*_seen, name):
            raise ConfigError(f"method '{name}' is based on itself (through {' -> '.join(_seen)})", "fix the preset")
        return method.extend(self.method(method.based_on, (*_seen, name)))

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

    def config(self, kind: str, spec: str, options: dict[str, Any] | None = None) -> tuple[Entry, Any]:
        """Validate ``options`` of ``spec`` once: the entry and its built ``Config``."""
        entry, options = self.split_spec(kind, spec, options)
        return entry, build_config(entry.cls.Config, options, f"{kind} '{entry.name}'", f"--set {kind}.{{}}")

    def build(self, entry: Entry, config: Any) -> Component:
        """The component of ``entry`` with an already validated ``config``."""
        component = entry.cls(config)
        component.name = entry.name
        return component

    def create(self, kind: str, spec: str, **options: Any) -> Component:
        """Build a component, validating its options against its ``Config``."""
        return self.build(*self.config(kind, spec, options))

    def create_part(self, kind: str, part: Any) -> Component:
        """The component of a run part (:class:`~energyat_core.run_config.Part`), from its built config."""
        if part.config is None:
            return self.create(kind, part.name, **part.options)
        return self.build(self.get(kind, part.name), part.config)


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
