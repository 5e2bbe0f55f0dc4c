"""energyat-sgld: SGLD sampling from a classifier's energy, and the ``energyat generate`` command."""

from energyat_sgld.sampler import SGLD, SGLDConfig

__all__ = ["SGLD", "SGLDConfig"]
__version__ = "0.1.0"
