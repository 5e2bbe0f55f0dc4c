"""The ``fgsm-sdi`` attack: FGSM from a learnable, sample-dependent initialisation (Jia et al. 2022).

Per batch (methods.md, FGSM-SDI), with ``CE`` the plain cross-entropy::

    g      = grad_x CE(f(x), y)
    delta0 = G([x, sign g])                                   # in (-eps, eps) by construction
    delta1 = clip(alpha * sign(grad_x CE(f(x + delta0), y)), -eps, eps)
    delta  = clip(delta0 + delta1, -eps, eps)
    x_adv  = clamp(x + delta, 0, 1)

The generator ``G`` (:class:`~energyat_fgsm_sdi.generator.Generator`) is trained jointly with
the model to *maximise* the model's loss, ``CE`` with label smoothing on ``f(x_adv)``, with its
own Adam optimiser, once every ``update_every`` batches (the first batch of the run included).
An update happens inside the attack call, before ``x_adv`` is produced, so the batch it is
computed on already gets the updated generator's initialisation (as in the authors' code).

Model mode during the generator update (a design choice, documented in the plugin's docs):
the update replays the engine's training step without touching the model. ``g`` and
``delta1`` are computed in the mode the engine runs the attack in (``--attack-bn``; the
preset sets train, as the released code), exactly as the attack that will use ``G``'s
output; the loss that ``G`` ascends is computed with the model in *train* mode, because that
is the mode in which the engine computes the loss the model descends, so ``G`` and the model
play the same game on the same quantity. The model's BatchNorm running statistics are frozen
during the update (core's ``frozen_running_stats``: batch statistics are used, the running
ones stay bit for bit), its mode is restored after it (``model_mode``), and gradients reach
``G``'s parameters only (``torch.autograd.grad``), so the update leaves no trace on the
model. With ``--attack-bn train`` every pass runs in train mode, which is what the released
code does (its model never leaves train mode).

``G``'s BatchNorm runs in train mode (batch statistics, running statistics updated) during
its update and in eval mode when it proposes ``delta0`` for training, as in the released code.

Under ``torchrun`` every rank builds the same ``G`` (same seed), updates it at the same
batches, and averages ``G``'s gradients and BatchNorm statistics over ranks, so all ranks keep
one generator and rank 0's checkpoint holds it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from energyat_core.api import (
    Attack,
    DistInfo,
    RunContext,
    ThreatModel,
    average_buffers,
    average_gradients,
    frozen_running_stats,
    model_mode,
    objective_values,
    option,
    smoothed_cross_entropy,
)
from energyat_fgsm_sdi.generator import Generator


@dataclass
class FGSMSDIConfig:
    """Options of the ``fgsm-sdi`` attack."""

    step_ratio: float = option(
        1.0, "FGSM step taken from x + delta0, as a multiple of the run's eps (1: alpha = eps, as the paper)", gt=0
    )
    update_every: int = option(
        20, "update the generator once every this many batches (the run's first batch included)", ge=1
    )
    lr: float = option(1e-3, "learning rate of the generator's Adam optimiser (constant)", gt=0)
    weight_decay: float = option(5e-4, "weight decay of the generator's Adam optimiser", ge=0)
    smoothing: float = option(
        0.1,
        "label smoothing of the CE on f(x_adv) that the generator maximises (true class 1 - smoothing, the others "
        "share the rest; their --factor 0.9 is 0.1); keep it equal to loss.smoothing",
        ge=0,
        lt=1,
    )
    channels: int = option(64, "hidden channels of the generator (64 in the paper)", ge=1)


def input_grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sign(grad_x CE(f(x), y))``, with the model in its current mode; nothing reaches ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = objective_values(model(x), y, "ce").sum()
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign().detach()


class FGSMSDI(Attack):
    """FGSM-SDI (Jia et al. 2022): FGSM from a sample-dependent start proposed by a generator that maximises the loss.

    State (checkpointed, restored by ``--resume``): the generator's weights and BatchNorm
    statistics, its Adam optimiser, and the count of batches seen (which decides when the
    generator is updated).
    """

    Config = FGSMSDIConfig
    #: the generator's tanh output and the sign step are L-inf constructions
    norms = ("linf",)

    def __init__(self, config: FGSMSDIConfig | None = None, threat: ThreatModel | None = None) -> None:
        super().__init__(config, threat)
        self.generator: Generator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        #: attack calls so far; the generator is updated when ``step % update_every == 0``
        self.step = 0
        #: the generator's objective (label-smoothed CE) at its last update, detached
        self.last_update_loss: torch.Tensor | None = None
        #: the run's ranks (one process outside torchrun): G's gradients and statistics are averaged over them
        self.dist = DistInfo()

    # -- construction -------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        """Take the run's threat model; build the generator and its optimiser on the run's device (seeded)."""
        super().setup(ctx)
        channels = ctx.data.image_shape[0] if ctx.data is not None else 3
        self.build(ctx.device, image_channels=channels, seed=ctx.seed)
        self.dist = ctx.dist if ctx.dist is not None else DistInfo()

    def build(self, device: torch.device | str, image_channels: int = 3, seed: int = 0) -> None:
        """(Re)create the generator, its Adam optimiser and the batch counter.

        The generator's initial weights depend on ``seed`` only: they are drawn from a
        private random stream, so building it leaves the global RNG untouched.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = Generator(self.threat.eps, image_channels=image_channels, channels=self.config.channels)
        self.generator = generator.to(device).eval()
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.step = 0
        self.last_update_loss = None

    # -- the attack ---------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x_adv`` from ``G``'s ``delta0`` and one FGSM step, updating ``G`` first when it is due."""
        if self.generator is None:  # used outside a run: build on the fly
            self.build(x.device, image_channels=x.shape[1])
        assert self.generator is not None
        x, y = x.detach(), y.detach()
        g_in = torch.cat([x, input_grad_sign(model, x, y).to(x.dtype)], dim=1)
        if self.step % self.config.update_every == 0:
            self.update_generator(model, x, y, g_in)
        self.step += 1
        self.generator.eval()
        with torch.no_grad():
            delta0 = self.generator(g_in).to(x.dtype)
        return self.finish(model, x, y, delta0).detach()

    def fgsm_step(self, model: nn.Module, x_start: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``delta1 = clip(alpha * sign(grad CE(f(x_start), y)), -eps, eps)``, model in its current mode."""
        eps = self.threat.eps
        alpha = self.threat.step_size(self.config.step_ratio)
        return (alpha * input_grad_sign(model, x_start, y)).clamp(-eps, eps)

    def finish(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        """From ``delta0`` to ``x_adv``: one FGSM step from ``x + delta0``, clip to the ball, clamp to [0,1].

        Differentiable with respect to ``delta0`` (``delta1`` is a constant, as in the paper):
        the generator's update backpropagates through this function.
        """
        eps = self.threat.eps
        delta1 = self.fgsm_step(model, x + delta0.detach(), y)
        delta = (delta0 + delta1).clamp(-eps, eps)
        return (x + delta).clamp(0.0, 1.0)

    def generator_objective(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the generator maximises: mean label-smoothed CE on ``f(x_adv)`` (the model's loss)."""
        return smoothed_cross_entropy(logits, y, self.config.smoothing).mean()

    def update_generator(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_in: torch.Tensor) -> None:
        """One Adam step of the generator on ``-objective``; the model is left exactly as it was."""
        assert self.generator is not None and self.optimizer is not None
        params = [p for p in self.generator.parameters() if p.requires_grad]
        with frozen_running_stats(model), model_mode(self.generator, True):
            with torch.enable_grad():
                delta0 = self.generator(g_in).to(x.dtype)
                x_adv = self.finish(model, x, y, delta0)  # attack part in the attack's mode
                with model_mode(model, True):  # the loss as the model's own update computes it
                    objective = self.generator_objective(model(x_adv), y)
                grads = torch.autograd.grad(-objective, params)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            average_gradients(params, self.dist)  # one generator on every rank
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            average_buffers(self.generator, self.dist)
        self.last_update_loss = objective.detach()

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator (weights and BatchNorm statistics), its optimiser and the batch counter."""
        if self.generator is None or self.optimizer is None:
            return {}
        return {
            "generator": {k: v.detach().clone() for k, v in self.generator.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (call after ``setup``)."""
        if not state:
            return
        if self.generator is None or self.optimizer is None:
            raise RuntimeError("fgsm-sdi: call setup() (or build()) before load_state_dict()")
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
