"""energyat-weat: the ``energy`` weighter and the ``weat`` preset.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_weat.plugin`) the weighter ``energy`` and the method ``weat``; the preset
is based on the ``trades`` preset of energyat-trades (its ``pgd`` attack and ``trades`` loss).
"""

from energyat_weat.weighter import EnergyWeighter, energy_weights

__version__ = "0.1.0"

__all__ = ["EnergyWeighter", "__version__", "energy_weights"]
