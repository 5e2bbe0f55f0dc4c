"""energyat-trades: the TRADES loss and the ``trades`` training preset.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_trades.plugin`) the loss ``trades`` and the method ``trades``. The
per-sample KL helper :func:`energyat_trades.divergence.kl_per_sample` is shared with
other plugins (``energyat-bridged``).
"""

from energyat_trades.divergence import kl_per_sample
from energyat_trades.loss import Trades, TradesConfig

__version__ = "0.1.0"

__all__ = ["Trades", "TradesConfig", "__version__", "kl_per_sample"]
