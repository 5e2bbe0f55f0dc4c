"""Finding and loading plugins: core's built-ins plus every ``energyat`` entry point.

A plugin that fails to import (whatever it raises, ``SystemExit`` included; only a real
Ctrl-C stops the command), implements a hook that does not exist, or raises while
registering is recorded as a :class:`PluginInfo` with a one-line error and skipped; the
rest of energyat keeps working. ``ENERGYAT_DISABLE_PLUGINS=a,b`` (entry-point or
distribution names) keeps plugins from loading at all.

**Who wins a name.** Every plugin has a rank: core itself, then the *first-party* plugins
(the distributions core's ``all`` extra lists, ``pip install energyat-core[all]``, read from
the installed metadata so that core names none of them), then everything else
(*third-party*). When two plugins claim the same name (an entry-point name here, a
component or method name in :mod:`energyat_core.registry`), :func:`pick` decides, never
the order in which they happen to load:

- the one of the highest rank wins and stays usable; each other one is skipped, with one
  line naming both distributions on its row of ``energyat plugins``;
- when several share the highest rank (two third-party plugins, say), *none* of them gets
  the name: silently preferring one would let installing a plugin change what an existing
  command does. Each is reported, and using the name is a one-line error that says to
  uninstall or disable one of them.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from energyat_core import hookspecs
from energyat_core.errors import first_line

ENTRY_POINT_GROUP = "energyat"
DISABLE_ENV = "ENERGYAT_DISABLE_PLUGINS"
#: the distribution of core, whose ``all`` extra lists the first-party plugins
CORE_DISTRIBUTION = "energyat-core"
FIRST_PARTY_EXTRA = "all"

#: ranks of :attr:`PluginInfo.rank`: a lower rank wins a contested name
CORE, FIRST_PARTY, THIRD_PARTY = 0, 1, 2
_ORIGIN = {CORE: "core", FIRST_PARTY: "first-party", THIRD_PARTY: "third-party"}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``energyat plugins`` shows it.

    ``loaded`` is false when the plugin itself could not be used (import error, unknown
    hook, entry-point name taken); ``errors`` also holds the registrations that were
    skipped by a plugin that did load.
    """

    name: str
    distribution: str
    version: str
    registered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disabled: bool = False
    rank: int = THIRD_PARTY
    loaded: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.disabled

    @property
    def origin(self) -> str:
        """``core``, ``first-party`` or ``third-party``."""
        return _ORIGIN[self.rank]

    @property
    def label(self) -> str:
        """How messages name the plugin: ``'example' (energyat-example-plugin, third-party)``."""
        return f"'{self.name}' ({self.distribution}, {self.origin})"


def canonical(name: str) -> str:
    """A distribution name in its normalised form (PEP 503): ``Energyat_PGD`` -> ``energyat-pgd``."""
    return re.sub(r"[-_.]+", "-", name).lower()


_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*["']""" + FIRST_PARTY_EXTRA + r"""["']""")
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def first_party_distributions() -> frozenset[str]:
    """The canonical names of the first-party plugin distributions.

    They are the requirements of core's ``all`` extra in the installed metadata of
    ``energyat-core``. Without that metadata (core run from a source tree that is not
    installed, or metadata that cannot be read) nobody is first-party.
    """
    try:
        requires = metadata.requires(CORE_DISTRIBUTION) or []
    except Exception:  # noqa: BLE001 - missing or unreadable metadata: no first party
        return frozenset()
    names = set()
    for requirement in requires:
        name = requirement_name(requirement)
        if name and _EXTRA_MARKER.search(requirement.partition(";")[2]):
            names.add(name)
    return frozenset(names)


def requirement_name(requirement: str) -> str | None:
    """The canonical distribution name of a requirement: ``energyat-pgd>=0.1; extra == "all"`` -> ``energyat-pgd``."""
    match = _REQUIREMENT_NAME.match(requirement.partition(";")[0])
    return canonical(match.group(1)) if match else None


def pick(claimants: list[PluginInfo]) -> PluginInfo | None:
    """The plugin that gets a name claimed by ``claimants``: the only one of the highest rank, else none."""
    top = min(c.rank for c in claimants)
    best = [c for c in claimants if c.rank == top]
    return best[0] if len(best) == 1 else None


def contested(what: str, claimants: list[PluginInfo]) -> tuple[str, str]:
    """Problem and fix for a name that several plugins of the same rank claim, so none gets it."""
    everyone = " and ".join(c.label for c in claimants)
    return f"{what} is claimed by {everyone}, so none of them gets it", (
        "uninstall one, or leave one out with --disable-plugins NAME"
    )


def settle(what: str, claimants: list[PluginInfo]) -> PluginInfo | None:
    """Give ``what`` to :func:`pick`'s winner; add one error line to every other claimant.

    Returns the winner (``None`` when the name is contested). One claimant wins silently.
    """
    winner = pick(claimants)
    for c in claimants:
        if winner is None:
            c.errors.append(" — ".join(contested(what, claimants)))
        elif c is not winner:
            c.errors.append(
                f"{what} is also claimed by {winner.label}, which keeps it; skipped in {c.distribution} — "
                f"rename it there, or uninstall one of the two"
            )
    return winner


def disabled_names(extra: str | None = None) -> set[str]:
    """The plugins to leave out: ``ENERGYAT_DISABLE_PLUGINS`` plus ``extra`` (comma-separated)."""
    raw = ",".join(x for x in (os.environ.get(DISABLE_ENV, ""), extra or "") if x)
    return {x.strip() for x in raw.split(",") if x.strip()}


def short_error(err: BaseException) -> str:
    """``Type: first line of the message (file.py:LINE)`` of an exception, on one line."""
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" ({os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    if isinstance(err, SystemExit):
        return f"SystemExit: the plugin called sys.exit({err.code!r}){where}"
    return f"{type(err).__name__}: {first_line(err)}{where}"


def load_plugins(disabled: set[str] | None = None) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Create the plugin manager with core's built-ins and every installed plugin.

    Entry points are listed by name. Two entry points with the same name (or one named
    ``core``) are settled by :func:`pick` before anything is imported.
    """
    from energyat_core import __version__, core_plugin

    disabled = disabled if disabled is not None else disabled_names()
    first_party = first_party_distributions()
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    core = PluginInfo("core", CORE_DISTRIBUTION, __version__, rank=CORE, loaded=True)
    infos = [core]
    pm.register(core_plugin, name="core")

    by_name: dict[str, list[tuple[PluginInfo, metadata.EntryPoint | None]]] = {"core": [(core, None)]}
    entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(entry_points, key=lambda e: (e.name, e.dist.name if e.dist is not None else "")):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        rank = FIRST_PARTY if canonical(dist) in first_party else THIRD_PARTY
        info = PluginInfo(ep.name, dist, version, rank=rank)
        infos.append(info)
        if ep.name in disabled or dist in disabled or canonical(dist) in disabled:
            info.disabled = True
            continue
        by_name.setdefault(ep.name, []).append((info, ep))

    for name, claims in by_name.items():
        winner = settle(f"plugin name '{name}'", [info for info, _ in claims])
        for claimant, entry_point in claims:
            if claimant is winner and entry_point is not None:
                _load_one(pm, claimant, entry_point)
    return pm, infos


def _load_one(pm: pluggy.PluginManager, info: PluginInfo, ep: metadata.EntryPoint) -> None:
    """Import and register one entry point; any failure becomes one line in ``info.errors``."""
    try:
        module = ep.load()
        pm.register(module, name=ep.name)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - a broken plugin (even sys.exit) must never end the CLI
        info.errors.append(short_error(err))
        return
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        pm.unregister(name=ep.name)
        info.errors.append(f"{str(err).splitlines()[0]} (misspelt hook name?)")
        return
    info.loaded = True


def call_per_plugin(pm: pluggy.PluginManager, hook_name: str, infos: list[PluginInfo], make_kwargs) -> None:
    """Call one hook plugin by plugin, so that registrations and errors are attributed.

    ``make_kwargs(info)`` returns the keyword arguments for that plugin's call. Whatever a
    plugin raises (except a Ctrl-C) is recorded on its row and the next plugin is called.
    """
    by_name = {i.name: i for i in infos if i.loaded}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        info = by_name[impl.plugin_name]
        try:
            impl.function(**make_kwargs(info))
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - see above
            info.errors.append(f"{hook_name}: {short_error(err)}")
