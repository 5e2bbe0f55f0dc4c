"""Method presets: a published method as a named bundle of components and defaults.

A plugin registers presets through the ``register_methods`` hook::

    register(Method(
        name="pgd-at",
        help="PGD adversarial training (Madry et al. 2018)",
        attack=("pgd", {"steps": 10}),
        loss=("ce", {}),
        training={"epochs": 200, "lr": 0.1, "schedule": "multistep"},
    ))

``energyat train --method NAME`` starts from the preset; every flag, ``--set`` and
config-file value overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Part = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """A named preset.

    ``attack``, ``loss`` and ``weighter`` are ``(component name, options)``; ``training``
    holds defaults for the run's own settings (any field of
    :class:`energyat_core.runconfig.RunConfig`, e.g. ``epochs``, ``lr``, ``schedule``).
    ``reference`` quotes the paper's reported result, shown by ``energyat describe``.
    """

    name: str
    help: str
    attack: Part = ("none", {})
    loss: Part = ("ce", {})
    weighter: Part = ("uniform", {})
    training: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
