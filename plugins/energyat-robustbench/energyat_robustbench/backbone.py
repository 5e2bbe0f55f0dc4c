"""The ``robustbench`` backbone: a RobustBench model built by robustbench's own code, weights from a local file.

RobustBench models take images in [0, 1]; those that need a normalisation apply it inside
(``DMWideResNet(mean=CIFAR10_MEAN, std=CIFAR10_STD)``). energyat puts the run's ``--normalize``
in front of every backbone; this backbone declares ``input_normalization = "none"``, so under
the default ``--normalize dataset`` nothing is put in front of it (a weights file written by
``energyat robustbench-import`` records it too). The model checks the first batch it sees:
values outside [0, 1] mean that something normalised them (an explicit ``--normalize
MEAN,STD``), and that is a one-line error rather than a silently different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyat_core.api import Backbone, ConfigError, RunContext, option
from energyat_robustbench.build import build_model
from energyat_robustbench.weights import load_checkpoint, warn

#: how far outside [0, 1] a first input may reach (rounding) before it counts as normalised
RANGE_SLACK = 1e-4


class RobustBenchBackbone(Backbone):
    """A RobustBench model (zoo name or architecture call) from robustbench's own definitions; weights from a file.

    ``--backbone robustbench:Carmon2019Unlabeled`` (CIFAR-10 L-inf zoo; ``cifar100/Linf/NAME``
    for another table) or ``--backbone "robustbench:WideResNet(depth=34, widen_factor=10)"``;
    ``--set backbone.checkpoint=FILE`` loads a RobustBench checkpoint (never downloaded). The
    model takes [0, 1] images and normalises them itself where it needs to, so the run's default
    ``--normalize dataset`` becomes ``none`` for it (:attr:`input_normalization`).
    """

    input_normalization = "none"

    @dataclass
    class Config:
        model: str = option(
            "Standard",
            "a RobustBench model-zoo name (CIFAR-10 L-inf, e.g. Carmon2019Unlabeled; DATASET/THREAT/NAME for "
            "another table, e.g. cifar100/Linf/NAME) or an architecture call as the zoo writes one, e.g. "
            "WideResNet(depth=34, widen_factor=10) or dm_wide_resnet.DMWideResNet(depth=28, width=10)",
        )
        checkpoint: str | None = option(
            None,
            "local RobustBench checkpoint: a torch file of {'state_dict': ...} or a state dict (keys maybe prefixed "
            "module.), read with torch.load(weights_only=True), or .safetensors; never downloaded",
        )

        def check(self) -> None:
            if not self.model.strip():
                raise ValueError("model must name a RobustBench model or architecture, e.g. Carmon2019Unlabeled")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: weights are loaded into the model right after it is built (a run read back): skip ``checkpoint``
        self.weights_follow = False

    def setup(self, ctx: RunContext) -> None:
        """Note whether a weights file is loaded over the model (then ``checkpoint`` is not read)."""
        self.weights_follow = bool(ctx.extras.get("loading_weights"))

    def build(self, num_classes: int) -> nn.Module:
        model = build_model(self.config.model, num_classes)
        dry = any(p.is_meta for p in model.parameters())  # built on the meta device to size it
        if self.config.checkpoint and not self.weights_follow and not dry:
            warn(load_checkpoint(model, self.config.checkpoint))
        model.register_forward_pre_hook(UnitRangeCheck())
        return model


class UnitRangeCheck:
    """A forward pre-hook: the first input must be images in [0, 1] (RobustBench models normalise themselves)."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.done:
            return
        self.done = True
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.is_meta or x.numel() == 0:
            return
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
            raise ConfigError(
                f"the RobustBench model got inputs in [{low:.3g}, {high:.3g}], not images in [0, 1]: energyat "
                "normalised them (RobustBench models take [0, 1] images and normalise themselves where they need to)",
                "run it with --normalize none",
            )
