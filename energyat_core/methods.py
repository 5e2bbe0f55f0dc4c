"""Method presets: a published method as a named bundle of components and settings.

A plugin registers presets through the ``register_methods`` hook::

    register(Method(
        name="pgd-at",
        help="PGD adversarial training (Madry et al. 2018)",
        parts={"attack": ("pgd", {"steps": 10}), "loss": ("ce", {})},
        settings={"epochs": 100, "lr": 0.1, "schedule": "multistep"},
    ))

A preset that extends another says so instead of importing it::

    register(Method(name="weat", help="...", based_on="trades",
                    parts={"weighter": ("energy", {})}, settings={"schedule": "onecycle"}))

``energyat train --method NAME`` starts from the preset; every flag, ``--set`` and
config-file value overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: a part of a preset: (component name, its options)
Part = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """A named preset.

    ``parts`` maps a kind of run part (``attack``, ``loss``, ``weighter``, ``backbone``, ...)
    to ``(component name, options)``; ``settings`` holds run settings (any field of
    :class:`~energyat_core.run_config.RunConfig`, e.g. ``epochs``, ``lr``, ``schedule``).
    With ``based_on`` the preset starts from that preset (resolved by name when used, so
    the base may come from another plugin): its settings are updated with these, and a
    part of the same component merges options, while a part naming another component
    replaces the base's. ``reference`` quotes the paper's reported result and
    ``reference_backbone`` names the backbone it was measured on (the preset may default
    to a smaller one); ``energyat describe method NAME`` shows both, with
    :meth:`reproduce_command`.
    """

    name: str
    help: str
    parts: dict[str, Part] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    based_on: str | None = None
    reference: str = ""
    reference_backbone: str | None = None

    def reproduce_command(self) -> str | None:
        """The command that trains this preset on the reference backbone and dataset (CIFAR-10)."""
        if self.reference_backbone is None:
            return None
        return f"energyat train --method {self.name} --backbone {self.reference_backbone} --dataset cifar10"

    def extend(self, base: Method) -> Method:
        """This preset on top of ``base`` (``based_on`` resolved)."""
        parts = {kind: (name, dict(opts)) for kind, (name, opts) in base.parts.items()}
        for kind, (name, opts) in self.parts.items():
            if kind in parts and parts[kind][0] == name:
                parts[kind] = (name, {**parts[kind][1], **opts})
            else:
                parts[kind] = (name, dict(opts))
        return Method(
            name=self.name,
            help=self.help,
            parts=parts,
            settings={**base.settings, **self.settings},
            based_on=None,
            reference=self.reference,
            reference_backbone=self.reference_backbone,  # a number is measured on one backbone: never inherited
        )
