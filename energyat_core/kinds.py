"""The kinds of component: declared once, here.

Every other place that needs the list of kinds derives it from :data:`KINDS`: the
registry (which hook registers a kind, which base class it must derive from),
``energyat plugins`` and ``energyat describe``, the ``energyat train`` flags and TOML
tables of the parts a run is composed of, and docs/hooks.md. The hook of each kind is
documented in :mod:`energyat_core.hookspecs` (a test checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from energyat_core.components import (
    Attack,
    Backbone,
    Component,
    Dataset,
    DataSource,
    Evaluator,
    Loss,
    Sampler,
    Weighter,
)


@dataclass(frozen=True)
class Kind:
    """One kind of component.

    ``in_run``: a training run is composed of one component of this kind (a flag
    ``--NAME`` of ``energyat train``, a ``[NAME]`` table in a config file, options under
    ``--set NAME.OPTION=VALUE``), defaulting to ``default`` (``None``: the run has none
    unless asked for). ``in_step``: such a run part is called in every training step and
    may keep state that checkpoints save (attack, loss, weighter, source); the others
    (backbone, dataset) shape the model and the data once.
    """

    name: str
    base: type[Component]
    hook: str
    help: str
    in_run: bool = False
    default: str | None = None
    in_step: bool = False

    @property
    def flag(self) -> str:
        return f"--{self.name}"


KINDS: tuple[Kind, ...] = (
    Kind("attack", Attack, "register_attacks", "how x_adv is found for a training batch", True, "none", True),
    Kind("loss", Loss, "register_losses", "what the model minimises, per sample", True, "ce", True),
    Kind(
        "weighter",
        Weighter,
        "register_weighters",
        "how much each sample counts in the batch mean",
        True,
        "uniform",
        True,
    ),
    Kind(
        "backbone", Backbone, "register_backbones", "the network architecture (or timm:NAME)", True, "preact_resnet18"
    ),
    Kind("dataset", Dataset, "register_datasets", "where training and test images come from", True, "synthetic"),
    Kind(
        "source", DataSource, "register_sources", "extra data mixed into every batch, e.g. NAME:PATH", True, None, True
    ),
    Kind("sampler", Sampler, "register_samplers", "how images are drawn from the classifier's energy"),
    Kind("evaluator", Evaluator, "register_evaluators", "an attack that measures robustness after training"),
)

#: kinds by name
KIND: dict[str, Kind] = {k.name: k for k in KINDS}
#: the kinds a training run is composed of, in the order they are built
RUN_KINDS: tuple[Kind, ...] = tuple(k for k in KINDS if k.in_run)
#: the run parts the training step calls
STEP_KINDS: tuple[Kind, ...] = tuple(k for k in KINDS if k.in_step)


def kind_names(*extra: str) -> str:
    """``"attack, loss, ..."`` (plus ``extra``), for messages."""
    return ", ".join([*(k.name for k in KINDS), *extra])
