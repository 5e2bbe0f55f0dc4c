"""energyat-trades: the TRADES loss and the ``trades`` training preset.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_trades.plugin`) the loss ``trades`` and the method ``trades``. The preset's
attack is the ``pgd`` attack of energyat-pgd; the per-sample KL is core's
(:func:`energyat_core.api.kl_per_sample`).
"""

from energyat_trades.loss import Trades, TradesConfig

__version__ = "0.1.0"

__all__ = ["Trades", "TradesConfig", "__version__"]
