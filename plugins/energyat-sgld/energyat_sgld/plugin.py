"""Hook implementations of the energyat-sgld plugin (entry point ``sgld``)."""

from __future__ import annotations

from energyat_core import hookimpl


@hookimpl
def register_samplers(register):
    """Register the ``sgld`` sampler."""
    from energyat_sgld.sampler import SGLD

    register("sgld", SGLD)


@hookimpl
def register_commands(app):
    """Add ``energyat generate``."""
    from energyat_sgld.generate import add_commands

    add_commands(app)
