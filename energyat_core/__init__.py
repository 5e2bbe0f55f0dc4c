"""energyat: adversarial training seen through energy-based models.

The plugin contract is in :mod:`energyat_core.hookspecs`; components derive from the
bases in :mod:`energyat_core.components`; :func:`energyat_core.registry.get_registry`
lists and creates them.
"""

from energyat_core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
