"""Hook implementations of the energyat-autoattack plugin (entry point ``autoattack``)."""

from __future__ import annotations

from energyat_core import hookimpl


@hookimpl
def register_evaluators(register):
    """Register the ``autoattack`` evaluator (``energyat eval --evaluator autoattack:standard``)."""
    from energyat_autoattack.evaluator import AutoAttackEvaluator

    register("autoattack", AutoAttackEvaluator)
