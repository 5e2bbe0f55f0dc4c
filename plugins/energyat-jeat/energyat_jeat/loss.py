"""The ``jeat`` loss: Joint Energy Adversarial Training (Zhu, Ma, Sun, Chen, Jiang, Li; ICCV 2021), per methods.md.

The batch objective is::

    L = CE(f(x_adv), y) + lambda * (E(x_adv) - E(x_sgld)),      E(x) = -logsumexp_k f(x)_k

with both terms batch means. The engine averages one value per sample, so the loss returns,
for sample ``i`` of the batch,

    l_i = CE(f(x_adv_i), y_i) + lambda * (E(x_adv_i) - E(x_sgld_i))

where ``x_sgld_i`` is the ``i``-th of the ``B`` model samples drawn for this step: the
mean over ``i`` is exactly the batch formula (``mean_i E(x_sgld_i)`` is the batch's
``E(x_sgld)``). The pairing of ``x_adv_i`` with ``x_sgld_i`` is arbitrary and changes
nothing in the mean; only a non-uniform weighter would make it matter.

Model samples come from a persistent replay buffer (JEM, Grathwohl et al. 2020): each step
takes ``B`` random buffer entries, restarts each of them from the ``sgld`` sampler's
initialisation with probability ``reinit_prob`` (0.05), runs ``sgld_steps`` (20) steps of
SGLD (model in eval mode) and writes the results back. The step and noise are JEM's
(``sgld_lr`` 1, ``sgld_std`` 0.01 on images in [-1, 1]) converted to our [0, 1] images:
``eta = 0.5``, ``sigma = 0.005`` (:mod:`energyat_jeat.jem_units`). The chains start from
the ``sgld`` plugin's initialiser, ``pca`` (methods.md), not from JEM's uniform noise: with
``lambda = 1`` the CE's ``logsumexp`` over ``x_adv`` cancels against ``E(x_adv)``, so the
classifier is only taught to tell classes apart through model samples near the data, and
chains restarted from noise are not near the data until the buffer has been revisited many
times (docs/methods/jeat.md, "Why the chains start from pca"). ``E(x_adv)`` is taken from
the logits of the CE term and ``E(x_sgld)`` from a train-mode pass over the samples alone
that leaves the BatchNorm running statistics untouched (``energy_bn=separate``, JEM's
separate passes; :meth:`JEAT.energies`). The buffer (images and labels) is part of the
training state: it is checkpointed and restored by ``--resume``.

Divergence guard (the JEM instability): non-finite energies stop the run with a
:class:`~energyat_core.api.NonFiniteError` before the update, so the last checkpoint is
the last good state; ``energy_clip`` optionally clips each sample's energy difference to
``[-c, c]`` (a clipped sample contributes no energy gradient).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from energyat_core.api import (
    Batch,
    CheckpointError,
    ConfigError,
    Loss,
    NonFiniteError,
    RunContext,
    build_config,
    frozen_running_stats,
    marginal_energy,
    model_mode,
    option,
)
from energyat_jeat.jem_units import JEM_BUFFER_SIZE, JEM_ETA, JEM_REINIT_FREQ, JEM_SGLD_STEPS, JEM_SIGMA
from energyat_sgld import SGLDConfig

#: the loss options that configure its ``sgld`` sampler -> the sampler's option names
SAMPLER_OPTIONS = {
    "sgld_steps": "steps",
    "sgld_eta": "eta",
    "sgld_sigma": "sigma",
    "sgld_momentum": "momentum",
    "init": "init",
    "conditional": "conditional",
}


@dataclass
class JEATConfig:
    """Options of the ``jeat`` loss.

    ``sgld_*``, ``init`` and ``conditional`` go to the ``sgld`` sampler (see
    :data:`SAMPLER_OPTIONS`); their bounds are the sampler's, checked by :meth:`check`
    against its declaration rather than restated here. Steps, noise, buffer and restart
    probability are JEM's, with its step and noise converted from its [-1, 1] inputs to our
    [0, 1] ones (:mod:`energyat_jeat.jem_units`); the start is the sampler's ``pca``.
    """

    lam: float = option(1.0, "weight lambda of the energy term E(x_adv) - E(x_sgld)")
    buffer_size: int = option(JEM_BUFFER_SIZE, "images in the persistent replay buffer (JEM: 10,000)", ge=1)
    reinit_prob: float = option(
        JEM_REINIT_FREQ,
        "probability that a chain restarts from the initialisation instead of its buffer image (JEM: 0.05)",
        ge=0,
        le=1,
    )
    sgld_steps: int = option(JEM_SGLD_STEPS, "the sgld sampler's steps per training step (JEM: 20)")
    sgld_eta: float = option(
        JEM_ETA,
        "the sgld sampler's step size eta: v <- m*v - (eta/2)*grad_x E on [0,1] images; 0.5 is JEM's step "
        "(x += 1 * grad(-E) on [-1,1] images) converted to [0,1] images: a quarter of the coefficient, eta/2 = 0.25",
    )
    sgld_sigma: float = option(
        JEM_SIGMA,
        "the sgld sampler's noise std on [0,1] images; 0.005 is JEM's 0.01 on [-1,1] images, halved",
    )
    sgld_momentum: float = option(0.0, "the sgld sampler's momentum (0: plain SGLD, as JEM)")
    init: str = option(
        "pca",
        "the sgld sampler's start of the buffer and of restarted chains (methods.md: the sgld plugin's "
        "initialiser): pca (class mean plus principal components, fitted on the training set), gaussian, or "
        "noise (uniform in [0,1], JEM's U(-1,1); with lambda 1 it does not train a classifier in short runs)",
    )
    conditional: bool = option(
        False,
        "draw x_sgld from E(x,y) = -f(x)_y with the buffer's labels (random classes); "
        "false (default): from the marginal E(x), as JEM's p(x) term",
    )
    energy_clip: float | None = option(
        None, "clip each sample's E(x_adv_i) - E(x_sgld_i) to [-c, c] (no gradient beyond); none: no clipping", gt=0
    )
    energy_bn: Literal["separate", "joint", "eval", "train"] = option(
        "separate",
        "BatchNorm of the energies: separate (default, JEM's passes: E(x_adv) from the logits the CE uses, "
        "E(x_sgld) from a train-mode pass over the model samples alone, running statistics left untouched), "
        "joint (one train-mode pass over [x_adv; x_sgld], running statistics untouched), eval (one pass in eval "
        "mode: running statistics) or train (one train-mode pass whose samples enter the running statistics)",
    )
    energy_limit: float = option(
        1e4,
        "stop the run (divergence) when any |E| exceeds this; the energies of a sane classifier stay far below",
        gt=0,
    )

    def check(self) -> None:
        """The sampler options must suit the ``sgld`` sampler: checked against its own declaration."""
        for mine, theirs in SAMPLER_OPTIONS.items():
            try:
                build_config(SGLDConfig, {theirs: getattr(self, mine)}, "the sgld sampler")
            except ConfigError as err:
                raise ValueError(f"{mine}: {err.problem}") from None

    def sampler_options(self) -> dict[str, Any]:
        """Options of the ``sgld`` sampler these settings mean."""
        return {theirs: getattr(self, mine) for mine, theirs in SAMPLER_OPTIONS.items()}


def jeat_per_sample(
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    energy_adv: torch.Tensor,
    energy_sgld: torch.Tensor,
    lam: float = 1.0,
    energy_clip: float | None = None,
) -> torch.Tensor:
    """``CE(f(x_adv_i), y_i) + lam * clip(E(x_adv_i) - E(x_sgld_i))`` per sample, in float32.

    ``energy_adv`` and ``energy_sgld`` are marginal energies ``-logsumexp_k f_k`` per sample.
    """
    ce = F.cross_entropy(logits_adv.float(), y, reduction="none")
    diff = energy_adv.float() - energy_sgld.float()
    if energy_clip is not None:
        diff = diff.clamp(-energy_clip, energy_clip)
    return ce + lam * diff


class JEAT(Loss):
    """JEAT (Zhu, Ma, Sun, Chen, Jiang, Li 2021): CE(x_adv) + lambda * (E(x_adv) - E(x_sgld)), x_sgld from a buffer.

    ``x_sgld`` comes from a persistent SGLD replay buffer (:meth:`draw`); both energies from
    the logits of the CE term and one pass over the samples (:meth:`energies`).
    """

    Config = JEATConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.sampler: Any = None
        self.buffer: torch.Tensor | None = None
        self.buffer_y: torch.Tensor | None = None
        self.num_classes = 0
        self.device = torch.device("cpu")
        self.run_dir: Any = None

    def setup(self, ctx: RunContext) -> None:
        """Create the ``sgld`` sampler (through the run's context) and fill the buffer from its initialisation."""
        self.sampler = ctx.create("sampler", "sgld", **self.config.sampler_options())
        self.sampler.setup(ctx)
        self.num_classes = ctx.num_classes
        self.device = ctx.device
        self.run_dir = ctx.run_dir
        n = self.config.buffer_size
        self.buffer_y = torch.randint(0, self.num_classes, (n,), device=self.device)
        self.buffer = self.sampler.init(self.buffer_y)

    # -- replay buffer ---------------------------------------------------------------------
    def draw(self, model: torch.nn.Module, n: int) -> torch.Tensor:
        """``n`` model samples: buffer entries (restarted with probability ``reinit_prob``) after SGLD.

        The sampler runs the model in eval mode and restores the mode the engine set. The
        results are written back to the buffer and returned detached.
        """
        assert self.buffer is not None and self.buffer_y is not None, "JEAT.setup(ctx) must run first"
        idx = torch.randint(0, self.buffer.shape[0], (n,), device=self.device)
        x0 = self.buffer[idx]
        y0 = self.buffer_y[idx]
        restart = torch.rand(n, device=self.device) < self.config.reinit_prob
        k = int(restart.sum())
        if k:
            y_new = torch.randint(0, self.num_classes, (k,), device=self.device)
            x0[restart] = self.sampler.init(y_new).to(x0.dtype)
            y0[restart] = y_new
        x = self.sampler.sample(model, x0, y0 if self.config.conditional else None)
        # idx may repeat an entry (drawn with replacement); an indexed write with repeated indices
        # keeps an unspecified one of them, so write only each entry's last draw, as a loop would
        draw = torch.arange(n, device=self.device)
        last = torch.full_like(self.buffer_y, -1).scatter_reduce(0, idx, draw, reduce="amax")
        keep = last[idx] == draw
        self.buffer[idx[keep]] = x[keep]
        self.buffer_y[idx[keep]] = y0[keep]
        return x

    # -- loss ------------------------------------------------------------------------------
    def energies(self, batch: Batch, x_sgld: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``E(x_adv)`` and ``E(x_sgld)`` per sample, with gradients, in the BatchNorm mode ``energy_bn``.

        ``separate`` (default) follows JEM's structure: ``E(x_adv)`` comes from the very logits
        the CE term uses (the engine's train-mode pass), so that with ``lambda = 1``
        ``CE + E(x_adv)`` is exactly the joint energy ``-f(x_adv)_y``, as in JEM's
        ``log p(x, y)``; ``E(x_sgld)`` comes from a train-mode pass over the model samples
        alone (JEM computes ``f(x_p_d)`` and ``f(x_q)`` in separate train-mode passes), with
        the running statistics restored, so that model samples enter neither the batch
        statistics ``x_adv`` is normalised with nor the running statistics that the attack,
        SGLD and evaluation use. Both energies are invariant to the scale of the weights
        before each BatchNorm, as the CE term is. The one-pass modes are :meth:`energy_logits`.
        """
        if self.config.energy_bn == "separate":
            e_adv = marginal_energy(batch.logits_adv)
            with model_mode(batch.model, training=True), frozen_running_stats(batch.model):
                e_sgld = marginal_energy(batch.model(x_sgld))
            return e_adv, e_sgld
        n = len(batch.y)
        energies = marginal_energy(self.energy_logits(batch.model, batch.x_adv, x_sgld))
        return energies[:n], energies[n:]

    def energy_logits(self, model: torch.nn.Module, x_adv: torch.Tensor, x_sgld: torch.Tensor) -> torch.Tensor:
        """Logits of ``[x_adv; x_sgld]`` in one pass, with gradients, for the one-pass modes of ``energy_bn``.

        ``joint`` normalises with the joint batch's statistics (the model samples share the
        batch statistics of ``x_adv``) and restores the running statistics afterwards;
        ``train`` lets the samples enter the running statistics; ``eval`` uses the running
        statistics, which lets the network inflate its logits through stale statistics (the
        energies passed 1e4 within a 4-epoch CPU run and the guard stopped it).
        """
        mode = self.config.energy_bn
        frozen = frozen_running_stats(model) if mode != "train" else contextlib.nullcontext()
        with model_mode(model, training=mode != "eval"), frozen:
            return model(torch.cat([x_adv, x_sgld]))

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Per-sample JEAT loss of the batch: draw model samples, their energies, guard, then the formula."""
        x_sgld = self.draw(batch.model, len(batch.y))
        e_adv, e_sgld = self.energies(batch, x_sgld)
        self._guard(e_adv.detach(), e_sgld.detach())
        cfg = self.config
        return jeat_per_sample(batch.logits_adv, batch.y, e_adv, e_sgld, cfg.lam, cfg.energy_clip)

    def _guard(self, e_adv: torch.Tensor, e_sgld: torch.Tensor) -> None:
        """Stop with a one-line error when the energies are non-finite or beyond ``energy_limit``."""
        limit = self.config.energy_limit
        both = torch.cat([e_adv, e_sgld])
        if bool(torch.isfinite(both).all()) and float(both.abs().max()) <= limit:
            return
        what = "non-finite" if not bool(torch.isfinite(both).all()) else f"larger than {limit:g} in magnitude"
        raise NonFiniteError(
            f"JEAT's energies became {what} (mean E(x_adv) {e_adv.mean().item():.4g}, mean E(x_sgld) "
            f"{e_sgld.mean().item():.4g}): the energy term diverged; the run stopped before the update and the "
            f"last good checkpoint is kept in '{self.run_dir}'",
            "lower --lr or loss.lam, or clip the term with --set loss.energy_clip=10, then continue with "
            "`energyat train --resume RUN_DIR`",
        )

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The replay buffer: images (float32 [N, C, H, W] in [0,1]) and their labels."""
        if self.buffer is None or self.buffer_y is None:
            return {}
        return {"buffer": self.buffer, "labels": self.buffer_y}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the replay buffer saved by :meth:`state_dict`."""
        if not state:
            return
        buffer, labels = state["buffer"], state["labels"]
        if self.buffer is not None and tuple(buffer.shape) != tuple(self.buffer.shape):
            raise CheckpointError(
                f"the saved JEAT replay buffer has shape {tuple(buffer.shape)}, this run expects "
                f"{tuple(self.buffer.shape)}",
                "resume with the run's own config (loss.buffer_size and the dataset must not change)",
            )
        self.buffer = buffer.to(self.device, torch.float32).clone()
        self.buffer_y = labels.to(self.device, torch.int64).clone()
