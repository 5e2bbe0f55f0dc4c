"""energyat-bridged: the bridged adversarial training loss and the ``bat`` preset.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_bridged.plugin`) the loss ``bridged`` and the method ``bat``.
"""

from energyat_bridged.loss import Bridged, BridgedConfig

__version__ = "0.1.0"

__all__ = ["Bridged", "BridgedConfig", "__version__"]
