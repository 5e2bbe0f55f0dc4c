"""Finding and loading plugins: core's built-ins plus every ``energyat`` entry point.

A plugin that fails to import, implements a hook that does not exist, or raises while
registering is recorded as a :class:`PluginInfo` with its error and skipped; the rest of
energyat keeps working. ``ENERGYAT_DISABLE_PLUGINS=a,b`` (entry-point or distribution
names) keeps plugins from loading at all.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from energyat_core import hookspecs

ENTRY_POINT_GROUP = "energyat"
DISABLE_ENV = "ENERGYAT_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``energyat plugins`` shows it."""

    name: str
    distribution: str
    version: str
    registered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disabled: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.disabled


def disabled_names(extra: str | None = None) -> set[str]:
    raw = ",".join(x for x in (os.environ.get(DISABLE_ENV, ""), extra or "") if x)
    return {x.strip() for x in raw.split(",") if x.strip()}


def _short_error(err: BaseException) -> str:
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"


def load_plugins(disabled: set[str] | None = None) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Create the plugin manager with core's built-ins and every installed plugin."""
    from energyat_core import __version__, core_plugin

    disabled = disabled if disabled is not None else disabled_names()
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    infos = [PluginInfo("core", "energyat-core", __version__)]
    pm.register(core_plugin, name="core")

    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        info = PluginInfo(ep.name, dist, version)
        infos.append(info)
        if ep.name in disabled or dist in disabled:
            info.disabled = True
            continue
        if pm.has_plugin(ep.name):
            info.errors.append(f"a plugin named '{ep.name}' is already loaded; rename this entry point")
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as err:  # a broken plugin must never break the CLI
            info.errors.append(_short_error(err))
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as err:
            pm.unregister(name=ep.name)
            info.errors.append(f"{err} (misspelt hook name?)")
    return pm, infos


def call_per_plugin(pm: pluggy.PluginManager, hook_name: str, infos: list[PluginInfo], make_kwargs) -> None:
    """Call one hook plugin by plugin, so that registrations and errors are attributed.

    ``make_kwargs(info)`` returns the keyword arguments for that plugin's call.
    """
    by_name = {i.name: i for i in infos}
    hook = getattr(pm.hook, hook_name)
    # get_hookimpls() is in registration order: core first, then plugins as loaded
    for impl in hook.get_hookimpls():
        info = by_name[impl.plugin_name]
        try:
            impl.function(**make_kwargs(info))
        except Exception as err:
            info.errors.append(f"{hook_name}: {_short_error(err)}")
