"""Base classes of the components a method is composed of.

Every component is a small class with a ``Config`` dataclass: its fields are the
options a user can set (``--set attack.steps=7``), each declared with
:func:`energyat_core.api.option` (default, help, bounds). The registry builds and
validates the ``Config`` once and passes it to the constructor.
Components are built by :meth:`energyat_core.registry.Registry.create`, then given the
run's context once through :meth:`Component.setup` before training starts.

Stateful components (an attack with a generator, a loss with a replay buffer) return
their state from :meth:`Component.state_dict`: nested dicts of tensors and plain
numbers, saved in the run's training-state safetensors file and restored by
``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from energyat_core.threat import ThreatModel

if TYPE_CHECKING:
    from energyat_core.data import ImageData


@dataclass
class NoOptions:
    """A component without options."""


@dataclass
class RunContext:
    """What a component may need to know about the run it is part of."""

    device: torch.device
    num_classes: int
    data: ImageData | None = None
    run_dir: Any = None  # pathlib.Path or None outside a run
    precision: str = "fp32"
    seed: int = 0
    dist: Any = None  # the run's DistInfo (ranks), or None outside torchrun
    #: the registry the run was built from; components that use other components call :meth:`create`
    registry: Any = None
    #: the run's threat model (radius, norm, optional absolute step), read by the training attack
    threat: ThreatModel = field(default_factory=ThreatModel)
    #: anything else a command hands its components (e.g. ``progress`` and ``console`` for evaluators)
    extras: dict[str, Any] = field(default_factory=dict)

    def create(self, kind: str, spec: str, **options: Any) -> Component:
        """Build another registered component (e.g. a loss that draws samples from a ``sampler``)."""
        registry = self.registry
        if registry is None:
            from energyat_core.registry import get_registry

            registry = get_registry()
        return registry.create(kind, spec, **options)

    def autocast(self):
        """The autocast context of the run (a no-op in fp32)."""
        from energyat_core.precision import autocast

        return autocast(self.device, self.precision)


class Component:
    """Base of every registered component."""

    Config: ClassVar[type] = NoOptions
    #: registered name, set by the registry when the component is created
    name: str = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def setup(self, ctx: RunContext) -> None:
        """Called once before training or evaluation, with the run's context."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (nested dicts of tensors and numbers); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class Batch:
    """One training batch as the loss and the weighter see it.

    ``x`` clean inputs in [0,1], ``y`` labels, ``x_adv`` the attack's output (``x`` itself
    when there is no attack). ``logits_clean`` and ``logits_adv`` are computed on first
    use, with gradients, and shared between the loss and the weighter so that no forward
    pass runs twice.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.x_adv = x_adv
        self._logits: dict[str, torch.Tensor] = {}

    @property
    def logits_clean(self) -> torch.Tensor:
        if "clean" not in self._logits:
            self._logits["clean"] = self.model(self.x)
        return self._logits["clean"]

    @property
    def logits_adv(self) -> torch.Tensor:
        if self.x_adv is self.x:
            return self.logits_clean
        if "adv" not in self._logits:
            self._logits["adv"] = self.model(self.x_adv)
        return self._logits["adv"]


class Attack(Component):
    """Finds adversarial inputs for a batch: ``x_adv = attack(model, x, y)``.

    Called with the model in the mode the engine chose for the attack (``--attack-bn``)
    and under the run's autocast. Must return a detached tensor in [0,1] of ``x``'s
    shape, within :attr:`threat` (the run's radius and norm: an attack has no radius of
    its own, so that the model is trained at the threat model it is evaluated at). The
    engine counts the forward and backward passes it makes through the model, so cost
    accounting needs nothing from the attack.
    """

    #: the norms the attack supports; a run with another ``--norm`` is refused when it is composed
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(self, config: Any = None, threat: ThreatModel | None = None) -> None:
        super().__init__(config)
        #: the threat model the attack works in: the run's, given by :meth:`setup` (8/255 L-inf outside a run)
        self.threat = threat if threat is not None else ThreatModel()

    def setup(self, ctx: RunContext) -> None:
        """Take the run's threat model; attacks that override this call ``super().setup(ctx)`` first."""
        self.threat = ctx.threat

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(model, x, y)


class Loss(Component):
    """The training objective, per sample: ``loss(batch) -> tensor of shape [B]``."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


class Weighter(Component):
    """Per-sample weights for the batch mean: ``weighter(batch) -> detached [B]``."""

    def __call__(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


class Sampler(Component):
    """Draws images from a classifier's energy.

    ``init(y)`` returns starting images for labels ``y`` (fitted on the training data in
    ``setup`` where the initialisation needs it); ``sample(model, x0, y)`` runs the
    chain from ``x0`` (class-conditional when ``y`` is given) and returns images in [0,1].
    """

    def init(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Backbone(Component):
    """A network architecture: ``build(num_classes)`` returns an ``nn.Module``.

    The module maps normalised images (N, C, H, W) to logits (N, num_classes); core wraps
    it with the run's normalisation (``--normalize``: the dataset's by default) so that
    models always take inputs in [0,1]. ``setup(ctx)`` runs before ``build``, with the
    run's data in ``ctx.data`` (its image size, e.g. to adapt a stem) and
    ``ctx.extras["loading_weights"]`` set when the weights come from a file.
    """

    #: the normalisation the backbone needs when the run keeps the default ``--normalize dataset``:
    #: ``None`` (the dataset's), or e.g. ``"none"`` for a backbone that normalises its [0, 1] input itself
    input_normalization: ClassVar[str | None] = None

    def build(self, num_classes: int) -> nn.Module:
        raise NotImplementedError


class Dataset(Component):
    """A source of labelled images: ``load(data_dir)`` returns an ``ImageData``."""

    def load(self, data_dir: str | None) -> ImageData:
        raise NotImplementedError


class DataSource(Component):
    """Extra labelled images for every training batch (e.g. synthetic proxy data).

    ``next_batch(n_real)`` returns ``(x, y)`` on the run's device — floats in [0,1] and
    int64 labels — to be concatenated with a real batch of ``n_real`` images. The source
    decides how many images it adds (a ratio option, say) and applies its own
    augmentation, if any. Its sampling position belongs in ``state_dict()`` so that
    ``--resume`` continues with the images an uninterrupted run would have seen.
    """

    def next_batch(self, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class Evaluator(Component):
    """A robustness evaluation: ``run(model, x, y, ...)`` -> {attack name: per-point correct}.

    ``x`` (N images in [0,1]) and ``y`` are on the model's device; ``eps`` and ``norm``
    ("linf" or "l2") are the threat model. Each returned value is a bool tensor of shape
    [N], True where the model is still right after that attack. ``energyat eval`` takes
    the per-point worst case over everything run.
    """

    #: eval.json field that gets the per-point worst case over this evaluator's attacks
    #: (e.g. RobustBench's ``"autoattack_acc"``); ``None``: only the per-attack entries
    report_field: ClassVar[str | None] = None

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, batch_size: int
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError
