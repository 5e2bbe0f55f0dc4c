"""The ``sgld`` sampler: Langevin dynamics on a classifier's energy (methods.md, "SGLD generation").

With logits ``f(x)`` the chain descends the joint energy ``E(x, y) = -f(x)_y`` (class-conditional,
when labels are given and ``conditional`` is on) or the marginal energy
``E(x) = -logsumexp_k f(x)_k``. Each of the ``K`` steps is::

    v <- m * v - (eta / 2) * grad_x E(x)
    x <- clamp(x + v + sigma * xi, 0, 1),      xi ~ N(0, I)

with ``v = 0`` at the start; ``m = 0`` is plain SGLD. Defaults: eta 1, K 20, m 0, sigma 0.001
(WEAT's code). ``eta`` and ``sigma`` are in the units of energyat's images, [0, 1]. WEAT's
generation code works on [0, 1] images too (``ToTensor()`` only, samples clamped to [0, 1];
``image_generation/utils.py``, ``sample_q_SGLD``: ``velocity = -step_size / 2 * grad`` and
noise ``alpha * N(0, noise_variance)``, with ``alpha=1`` and ``noise_variance=0.001`` as its
momentum notebook passes them), so its values need no conversion. Values from code on other
scales do: JEM's step 1 and noise 0.01 on [-1, 1] images are ``eta = 0.5`` and
``sigma = 0.005`` here (``energyat_jeat.jem_units``). The energy of a batch is the sum of the
per-sample energies, so each sample follows its own gradient; the model runs in eval mode
(BatchNorm with running statistics, samples independent of each other) and its previous mode
is restored afterwards. Gradients are taken with respect to the images only: nothing reaches
the parameters' ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from energyat_core.api import ConfigError, RunContext, Sampler, joint_energy, marginal_energy, model_mode, option
from energyat_sgld.init_stats import ClassStats, load_or_fit

#: ``callback(step, x, energy)`` sees every step's input images and their energies (before the update)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class SGLDConfig:
    """Options of the ``sgld`` sampler."""

    eta: float = option(1.0, "step size eta of the update v <- m*v - (eta/2)*grad_x E", ge=0)
    steps: int = option(20, "number of SGLD steps K (0 returns the initialisation)", ge=0)
    momentum: float = option(0.0, "momentum m (0: plain SGLD)", ge=0, lt=1)
    sigma: float = option(0.001, "std of the Gaussian noise sigma*xi added at every step (WEAT's code: 0.001)", ge=0)
    init: Literal["noise", "gaussian", "pca"] = option(
        "pca",
        "start of the chain: noise (uniform in [0,1]), gaussian (N(mu_y, Sigma_y + 1e-4 I) per class, "
        "Santurkar et al. 2019) or pca (class mean plus its principal components explaining pca_variance, WEAT)",
    )
    conditional: bool = option(
        True, "descend E(x,y) = -f(x)_y when labels are given; false: the marginal E(x) = -logsumexp_k f(x)_k"
    )
    fit_n: int = option(5000, "gaussian/pca: fit each class on at most its first fit_n training images", ge=2)
    pca_variance: float = option(
        0.95, "pca: keep the leading components explaining this share of the class variance", gt=0, le=1
    )
    pca_scale: float = option(
        0.005,
        "pca: x0 = mu_y + sum_i s_i * z_i * pca_scale * PC_i, with s_i the singular values of the centred "
        "class data matrix (sklearn's singular_values_, as in WEAT's code)",
        ge=0,
    )
    cache: bool = option(True, "keep the fitted statistics in the run directory (sgld_init_<init>.safetensors)")


def sgld_energy(logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-sample energy the chain descends: ``-f(x)_y`` with labels, ``-logsumexp f(x)`` without."""
    return marginal_energy(logits) if y is None else joint_energy(logits, y)


class SGLD(Sampler):
    """Stochastic gradient Langevin dynamics on the classifier's energy, from a noise, Gaussian or PCA start."""

    Config = SGLDConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.stats: ClassStats | None = None
        self.image_shape: tuple[int, int, int] | None = None
        self.num_classes: int | None = None
        self.device = torch.device("cpu")
        self.fit_report: dict[str, Any] = {}

    def setup(self, ctx: RunContext) -> None:
        """Read the image shape from the run's data and fit (or load from cache) the initialisation."""
        if ctx.data is None:
            raise ConfigError(
                "sampler 'sgld' needs the run's training data (image shape, per-class statistics)",
                "create it inside a run, or call setup() with a RunContext that has data",
            )
        self.device = ctx.device
        self.num_classes = ctx.data.num_classes
        self.image_shape = ctx.data.image_shape
        if self.config.init != "noise":
            ctx.data.require_in_memory(
                f"sampler 'sgld' with init={self.config.init} (fitted per class on the training images)",
                "use init=noise, or train without --set dataset.stream=true",
            )
            self.stats, self.fit_report = load_or_fit(
                ctx.data.train_x,
                ctx.data.train_y,
                ctx.data.num_classes,
                self.config.init,
                fit_n=self.config.fit_n,
                variance=self.config.pca_variance,
                device=ctx.device,
                run_dir=ctx.run_dir if self.config.cache else None,
            )

    def init(self, y: torch.Tensor) -> torch.Tensor:
        """Starting images for labels ``y`` (float32 in [0,1] on the run's device)."""
        if self.image_shape is None:
            raise RuntimeError("SGLD.setup(ctx) must run before init()")
        if self.config.init == "noise":
            return torch.rand(len(y), *self.image_shape, device=self.device)
        assert self.stats is not None
        return self.stats.sample(y.to(self.device), self.config.pca_scale)

    def sample(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run ``K`` SGLD steps from ``x0``; class-conditional when ``y`` is given and ``conditional`` is on.

        Returns detached images in [0,1] of ``x0``'s shape. ``callback(step, x, energy)`` is
        called before every update with that step's images and per-sample energies.
        """
        cfg = self.config
        labels = y if (cfg.conditional and y is not None) else None
        x = x0.detach().float().clone()
        v = torch.zeros_like(x)
        with model_mode(model, training=False):
            for step in range(cfg.steps):
                x.requires_grad_(True)
                with torch.enable_grad():
                    energy = sgld_energy(model(x), labels)
                    (grad,) = torch.autograd.grad(energy.sum(), x)
                x = x.detach()
                if callback is not None:
                    callback(step, x, energy.detach())
                with torch.no_grad():
                    v = cfg.momentum * v - (cfg.eta / 2) * grad.float()
                    x = x + v
                    if cfg.sigma > 0:
                        x = x + cfg.sigma * torch.randn_like(x)
                    x = x.clamp_(0.0, 1.0)
        return x.detach()
