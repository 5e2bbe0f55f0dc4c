"""energyat-jeat: Joint Energy Adversarial Training (Zhu, Ma, Sun, Chen, Jiang, Li; ICCV 2021)."""

from energyat_jeat.loss import JEAT, JEATConfig, jeat_per_sample

__all__ = ["JEAT", "JEATConfig", "jeat_per_sample"]
__version__ = "0.1.0"
