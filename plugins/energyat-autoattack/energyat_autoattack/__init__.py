"""energyat-autoattack: AutoAttack (Croce & Hein 2020) as an ``energyat eval`` evaluator."""

from energyat_autoattack.evaluator import AutoAttackEvaluator

__all__ = ["AutoAttackEvaluator"]
