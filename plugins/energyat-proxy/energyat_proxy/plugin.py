"""Hook implementations of the energyat-proxy plugin (entry point ``proxy``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_proxy.source import ProxySource


@hookimpl
def register_sources(register):
    """Register the ``proxy`` source: synthetic images from an .npz mixed into every training batch."""
    register("proxy", ProxySource)
