"""energyat's public surface: everything a plugin may import from core, in one module.

The rule (checked by ``tests/test_architecture.py``): a plugin imports only
``energyat_core`` (top level), ``energyat_core.api`` and, in its tests,
``energyat_core.testing``; from another plugin it imports only that plugin's top-level
package names, and only where its ``pyproject.toml`` declares the dependency. Every other
module of ``energyat_core`` is internal and may change without notice.

::

    from dataclasses import dataclass
    from energyat_core.api import Attack, hookimpl, option, pgd, default_step

    class MyAttack(Attack):
        '''One line that ``energyat describe attack my-attack`` shows.'''

        @dataclass
        class Config:
            steps: int = option(10, "gradient steps", ge=1)

        def perturb(self, model, x, y):
            ...

    @hookimpl
    def register_attacks(register):
        register("my-attack", MyAttack)
"""

from __future__ import annotations

# -- the plugin contract: hooks, component bases, options, presets, errors ------------------
from energyat_core.checkpoint import atomic_save, read_safetensors, read_weights_only, weights_load_failure
from energyat_core.components import (
    Attack,
    Backbone,
    Batch,
    Component,
    Dataset,
    DataSource,
    Evaluator,
    Loss,
    RunContext,
    Sampler,
    Weighter,
)

# -- data, files and commands (for plugins that add data sources or CLI commands) -----------
from energyat_core.data import ImageData, cache_dir
from energyat_core.data.cache import CACHE_DIR_ENV, cache_key, load_arrays, save_arrays
from energyat_core.data.seeds import seeded_generator

# -- distributed training (components with trainable parts of their own) --------------------
from energyat_core.distributed import DistInfo, average_buffers, average_gradients

# -- shared maths: energies, divergences, perturbations, model modes ------------------------
from energyat_core.divergence import kl_per_sample, smoothed_cross_entropy
from energyat_core.energy import joint_energy, marginal_energy
from energyat_core.errors import CheckpointError, ConfigError, DataError, EnergyATError, NonFiniteError
from energyat_core.evaluation import batched, predict
from energyat_core.hookspecs import hookimpl
from energyat_core.methods import Method
from energyat_core.modes import frozen_running_stats, model_mode
from energyat_core.options import as_dict, build_config, option
from energyat_core.perturbation import (
    NORMS,
    OBJECTIVES,
    RANDOM_STARTS,
    default_step,
    objective_values,
    pgd,
    project,
    random_start_delta,
)
from energyat_core.precision import resolve_device
from energyat_core.progress import table, task_progress
from energyat_core.run_config import parse_sets
from energyat_core.run_dir import MODEL_FILE
from energyat_core.threat import DEFAULT_EPS, ThreatModel


def load_run(*args, **kwargs):
    """Rebuild a trained run's model, config and data from its directory (see ``energyat eval``).

    Imported on first use: the engine is not loaded with every plugin.
    """
    from energyat_core.saved_run import load_run as load

    return load(*args, **kwargs)


__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_EPS",
    "MODEL_FILE",
    "NORMS",
    "OBJECTIVES",
    "RANDOM_STARTS",
    "Attack",
    "Backbone",
    "Batch",
    "CheckpointError",
    "Component",
    "ConfigError",
    "DataError",
    "DataSource",
    "Dataset",
    "DistInfo",
    "EnergyATError",
    "Evaluator",
    "ImageData",
    "Loss",
    "Method",
    "NonFiniteError",
    "RunContext",
    "Sampler",
    "ThreatModel",
    "Weighter",
    "as_dict",
    "atomic_save",
    "average_buffers",
    "average_gradients",
    "batched",
    "build_config",
    "cache_dir",
    "cache_key",
    "default_step",
    "frozen_running_stats",
    "hookimpl",
    "joint_energy",
    "kl_per_sample",
    "load_arrays",
    "load_run",
    "marginal_energy",
    "model_mode",
    "objective_values",
    "option",
    "parse_sets",
    "pgd",
    "predict",
    "project",
    "random_start_delta",
    "read_safetensors",
    "read_weights_only",
    "resolve_device",
    "save_arrays",
    "seeded_generator",
    "smoothed_cross_entropy",
    "table",
    "task_progress",
    "weights_load_failure",
]
