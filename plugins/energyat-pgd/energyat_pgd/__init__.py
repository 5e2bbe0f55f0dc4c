"""energyat-pgd: PGD, FGSM and FGSM-RS attacks, and the PGD-AT and FGSM-RS presets.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_pgd.plugin`) the attacks ``pgd``, ``fgsm`` and ``fgsm-rs`` and the
methods ``pgd-at`` and ``fgsm-rs``.
"""

from energyat_pgd.attacks import FGSM, FGSMRS, PGD, FGSMConfig, FGSMRSConfig, PGDConfig

__version__ = "0.1.0"

__all__ = ["FGSM", "FGSMRS", "PGD", "FGSMConfig", "FGSMRSConfig", "PGDConfig", "__version__"]
