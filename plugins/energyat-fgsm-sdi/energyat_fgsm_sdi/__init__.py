"""energyat-fgsm-sdi: fast adversarial training with a learnable, sample-dependent initialisation.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_fgsm_sdi.plugin`) the attack ``fgsm-sdi`` and the method ``fgsm-sdi``
(Jia et al. 2022, "Boosting Fast Adversarial Training with Learnable Adversarial
Initialization").
"""

from energyat_fgsm_sdi.attack import FGSMSDI, FGSMSDIConfig
from energyat_fgsm_sdi.generator import Generator

__version__ = "0.1.0"

__all__ = ["FGSMSDI", "FGSMSDIConfig", "Generator", "__version__"]
