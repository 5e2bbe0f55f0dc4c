"""energyat-robustbench: models of the RobustBench zoo as energyat backbones, built by robustbench's own code.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_robustbench.plugin`) the backbone ``robustbench`` and the command
``energyat robustbench-import``, which turns a RobustBench checkpoint into an energyat weights file.
"""

from energyat_robustbench.backbone import RobustBenchBackbone
from energyat_robustbench.build import build_model
from energyat_robustbench.weights import load_checkpoint, read_checkpoint

__version__ = "0.1.0"

__all__ = ["RobustBenchBackbone", "build_model", "load_checkpoint", "read_checkpoint", "__version__"]
