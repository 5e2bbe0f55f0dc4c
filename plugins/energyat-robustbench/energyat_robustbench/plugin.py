"""Hook implementations of the energyat-robustbench plugin (entry point ``robustbench``)."""

from __future__ import annotations

from energyat_core import hookimpl
from energyat_robustbench.backbone import RobustBenchBackbone


@hookimpl
def register_backbones(register):
    """Register the ``robustbench`` backbone."""
    register("robustbench", RobustBenchBackbone)


@hookimpl
def register_commands(app):
    """Add ``energyat robustbench-import``."""
    from energyat_robustbench.convert import add_commands

    add_commands(app)
