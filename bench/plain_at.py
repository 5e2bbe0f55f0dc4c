"""A plain PyTorch adversarial-training loop, written the way the papers' released code is.

It shares nothing with energyat but the network class it trains: its own data pipeline
(uint8 arrays through torchvision's ``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip`` in a ``DataLoader``, as the papers' scripts), its own attacks,
losses, optimiser and learning-rate schedules. Each :class:`Recipe` follows one released
script:

- ``pgd-at``: Rice et al.'s ``train_cifar.py`` (PGD-AT as Madry et al.): PGD-10 with step
  eps/4 from ``U(-eps, eps)``, the model in train mode while the adversary is made, SGD
  0.1 / 0.9 / 5e-4, piecewise lr x0.1 at 1/2 and 1/4 of training, set every iteration,
  inputs normalised with the CIFAR-10 mean and std.
- ``fgsm-rs``: Wong et al.'s ``train_fgsm.py``: one step of 1.25 eps from ``U(-eps, eps)``,
  train mode, SGD 0.2 peak / 0.9 / 5e-4 under ``torch.optim.lr_scheduler.CyclicLR`` with
  ``step_size_up = step_size_down = lr_steps / 2`` (which, by torch's default, also cycles
  the momentum 0.9 -> 0.8 -> 0.9), CIFAR-10 normalisation.
- ``trades``: Zhang et al.'s ``train_trades_cifar10.py``: 10 steps of 0.007 (at eps
  8/255; scaled with eps) maximising the summed KL from ``x + 0.001 N(0, I)``, eval mode
  while the adversary is made, loss ``CE(f(x), y) + 6 KL(p(x) || p(x_adv)) / B`` with
  gradients through both terms, SGD 0.1 / 0.9 / 2e-4, lr x0.1 at 74/76 of training (their
  epoch 75 of 76), no input normalisation.

:func:`evaluate` scores any model mapping images in [0, 1] to logits (the plain one and
energyat's) the same way: clean and PGD-K accuracy, eval mode, CE, step eps/4, uniform start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the constants of Wong et al.'s and Rice et al.'s utils.py
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class Recipe:
    """One method as its released code trains it (attack, loss, optimiser, schedule)."""

    method: str
    attack: str  # "pgd" (CE, uniform start) or "trades" (KL, normal start)
    steps: int
    step_ratio: float  # attack step / eps
    attack_bn: str  # "train" or "eval": the model's mode while the adversary is made
    lr: float
    momentum: float
    weight_decay: float
    schedule: str  # "piecewise" (milestones, set every iteration) or "cyclic" (torch CyclicLR, peak at 1/2)
    milestones: tuple[float, ...] = ()
    beta: float = 0.0  # TRADES' KL weight
    normalise: bool = True  # CIFAR-10 mean/std in front of the network (Rice, Wong); TRADES feeds [0, 1]
    source: str = ""


RECIPES = {
    "pgd-at": Recipe(
        "pgd-at", "pgd", 10, 0.25, "train", 0.1, 0.9, 5e-4, "piecewise", (0.5, 0.75),
        source="Rice et al. 2020, train_cifar.py (PGD-AT of Madry et al. 2018)",
    ),
    "fgsm-rs": Recipe(
        "fgsm-rs", "pgd", 1, 1.25, "train", 0.2, 0.9, 5e-4, "cyclic",
        source="Wong et al. 2020, train_fgsm.py",
    ),
    "trades": Recipe(
        "trades", "trades", 10, 0.007 / (8 / 255), "eval", 0.1, 0.9, 2e-4, "piecewise", (74 / 76,), beta=6.0,
        normalise=False, source="Zhang et al. 2019, train_trades_cifar10.py and trades.py",
    ),
}  # fmt: skip


class Normalise(nn.Module):
    """``(x - mean) / std`` per channel, in front of the network (as the papers' ``normalize``)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_model(net: nn.Module, recipe: Recipe) -> nn.Module:
    """``net`` behind the recipe's input normalisation (none for TRADES)."""
    return nn.Sequential(Normalise(CIFAR10_MEAN, CIFAR10_STD), net) if recipe.normalise else nn.Sequential(net)


# -- attacks (inputs and outputs in [0, 1]) ------------------------------------------------
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """L-inf PGD on the CE from ``U(-eps, eps)`` (FGSM-RS with ``steps=1``), as Rice et al.'s ``attack_pgd``."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = torch.min(torch.max(delta, -x), 1 - x)  # x + delta inside [0, 1]
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = torch.min(torch.max(delta, -x), 1 - x)
    return (x + delta).detach()


def trades_kl(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """TRADES' inner maximisation: signed steps on the summed ``KL(p(x) || p(x'))`` from ``x + 0.001 N(0, I)``.

    ``p(x)`` is computed once (their code recomputes it at every step: the same values,
    since the model is in eval mode here).
    """
    with torch.no_grad():
        p_natural = F.softmax(model(x), dim=1)
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_natural, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


# -- one training step per recipe --------------------------------------------------------
def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, r: Recipe, eps: float):
    """One optimisation step of recipe ``r``; returns the loss and the logits of the loss' first term."""
    alpha = r.step_ratio * eps
    model.train(r.attack_bn == "train")
    if r.attack == "trades":
        x_adv = trades_kl(model, x, eps, alpha, r.steps)
    else:
        x_adv = pgd(model, x, y, eps, alpha, r.steps)
    model.train()
    if r.attack == "trades":  # trades.py: CE(f(x)) + beta / B * KL_sum(p(x) || p(x_adv)), f(x) run twice as theirs
        logits = model(x)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum")
        loss = F.cross_entropy(logits, y) + r.beta * kl / len(x)
    else:
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def piecewise(lr: float, milestones: tuple[float, ...]) -> Callable[[float], float]:
    """lr x0.1 at each milestone (fractions of training), as Rice et al.'s ``lr_schedule(t)``."""
    return lambda frac: lr * 0.1 ** sum(frac >= m for m in milestones)


class TrainData(torch.utils.data.Dataset):
    """uint8 HWC images served one by one through the papers' crop and flip."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, torch.from_numpy(labels)
        self.transform = transforms.Compose(
            [transforms.ToPILImage(), transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
             transforms.ToTensor()]
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def train(
    build_net: Callable[[], nn.Module],
    recipe: Recipe,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    seed: int,
    eps: float = 8 / 255,
    batch_size: int = 128,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train ``build_net()`` with ``recipe`` on uint8 HWC ``images``; the model and its seconds per epoch.

    The network is built after seeding, so its initial weights depend on ``seed`` alone;
    the seconds are those of training (no evaluation).
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = make_model(build_net(), recipe)
    loader = torch.utils.data.DataLoader(TrainData(images, labels), batch_size=batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    n_batches = len(loader)
    lr_steps = epochs * n_batches
    scheduler = None
    if recipe.schedule == "cyclic":  # train_fgsm.py, stepped after every batch
        scheduler = torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=0.0, max_lr=recipe.lr, step_size_up=lr_steps / 2, step_size_down=lr_steps / 2
        )
    lr_at = piecewise(recipe.lr, recipe.milestones)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (x, y) in enumerate(loader):
            if scheduler is None:  # train_cifar.py: lr = lr_schedule(epoch + (i + 1) / len(batches)) each iteration
                frac = (epoch + (i + 1) / n_batches) / epochs
                for group in opt.param_groups:
                    group["lr"] = lr_at(frac)
            loss, logits = train_step(model, opt, x, y, recipe, eps)
            if scheduler is not None:
                scheduler.step()
            loss_sum += float(loss) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        seconds.append(time.perf_counter() - start)
        if log:
            log(f"plain {recipe.method} seed {seed} epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.3f}, "
                f"train acc {100 * correct / seen:.1f}%, {seconds[-1]:.1f} s")  # fmt: skip
    return model, seconds


def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, *, eps: float, steps: int, seed: int = 0,
    batch_size: int = 500,
) -> tuple[float, float]:  # fmt: skip
    """Clean and PGD-``steps`` accuracy (%) of ``model`` on uint8 HWC ``images``: eval mode, CE, step eps/4.

    The random starts come from a generator seeded with ``seed``, so that two models are
    attacked from the same starting points.
    """
    model.eval()
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(labels)
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    clean = robust = 0
    try:
        for i in range(0, len(y_all), batch_size):
            x, y = x_all[i : i + batch_size], y_all[i : i + batch_size]
            with torch.no_grad():
                clean += int((model(x).argmax(1) == y).sum())
            x_adv = pgd(model, x, y, eps, eps / 4, steps)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
    finally:
        torch.set_rng_state(rng_state)
    return 100 * clean / len(y_all), 100 * robust / len(y_all)
