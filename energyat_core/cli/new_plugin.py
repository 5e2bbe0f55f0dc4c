"""``energyat new-plugin NAME --kind KIND``: start a plugin package from a template.

It writes a package that installs and passes its own test as generated: ``pyproject.toml``
(distribution ``energyat-NAME``, an entry point in the ``energyat`` group),
``energyat_NAME/plugin.py`` with one small, working component of the chosen kind (an
option declared with ``option(...)`` and the hook that registers it), a test that uses it
through ``energyat_core.testing`` and a README. The templates are the strings below.

(Over 300 lines for a reason: most of it is the five templates, one per kind, kept as plain text.)
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from energyat_core.errors import ConfigError

#: plugin names: lower case letters, digits and single dashes, starting with a letter
NAME_RE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "energyat-{name}"
version = "0.1.0"
description = "An energyat plugin: the {kind} '{name}'"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["energyat-core"]

# the line that makes this a plugin: an entry point in the "energyat" group
[project.entry-points.energyat]
{name} = "{package}.plugin"

[tool.setuptools.packages.find]
include = ["{package}*"]

[tool.ruff]
line-length = 120
"""

INIT = '''\
"""energyat-{name}: an energyat plugin (the {kind} '{name}'); the hooks are in :mod:`{package}.plugin`."""

__version__ = "0.1.0"
'''

README = """\
# energyat-{name}

An [energyat](https://pypi.org/project/energyat-core/) plugin that registers the {kind} `{name}`.

```
pip install -e .                 # energyat finds the plugin through its entry point
energyat plugins                 # lists '{name}'
energyat describe {kind} {name}    # its options
python -m pytest tests           # the plugin's own test (a tiny CPU run)
```

Usage: {usage}

The component is in `{package}/plugin.py`; it imports from core only `energyat_core.api`
(its test also uses `energyat_core.testing`). Options are declared with `option(...)` in the
component's `Config` and set with `--set {kind}.OPTION=VALUE`.
"""

# -- one component per kind: {cls} is the class name, {name} the registered name -----------------

ATTACK = '''\
"""The attack '{name}': one signed-gradient step from the clean input (FGSM)."""

from dataclasses import dataclass

from energyat_core.api import Attack, hookimpl, option, pgd


class {cls}(Attack):
    """One-step attack (FGSM): x + step * sign(grad of the cross-entropy), in the run's eps-ball."""

    @dataclass
    class Config:
        step_ratio: float = option(1.0, "step size as a multiple of the run's eps (1: FGSM)", gt=0)

    def perturb(self, model, x, y):
        # the radius and norm are the run's threat model (--eps, --norm), in self.threat;
        # a one-step PGD without a random start is FGSM; pgd takes the input gradient itself
        # and returns a detached tensor in [0,1] of x's shape
        threat = self.threat
        alpha = threat.step_size(self.config.step_ratio)
        return pgd(model, x, y, eps=threat.eps, alpha=alpha, steps=1, norm=threat.norm, random_start="none")


@hookimpl
def register_attacks(register):
    register("{name}", {cls})
'''

LOSS = '''\
"""The loss '{name}': cross-entropy on the adversarial inputs, with optional label smoothing."""

from dataclasses import dataclass

from energyat_core.api import Loss, hookimpl, option, smoothed_cross_entropy


class {cls}(Loss):
    """Cross-entropy on the attack's output, one value per sample."""

    @dataclass
    class Config:
        smoothing: float = option(0.0, "label smoothing: mass moved from the true class to the others", ge=0, lt=1)

    def __call__(self, batch):
        # batch.logits_adv is model(batch.x_adv), computed once and shared with the weighter
        return smoothed_cross_entropy(batch.logits_adv, batch.y, self.config.smoothing)


@hookimpl
def register_losses(register):
    register("{name}", {cls})
'''

WEIGHTER = '''\
"""The weighter '{name}': uniform weights, optionally tilted towards misclassified samples."""

from dataclasses import dataclass

import torch
from energyat_core.api import Weighter, hookimpl, option


class {cls}(Weighter):
    """Weight 1 per sample, plus ``boost`` for each sample the model gets wrong; mean 1."""

    @dataclass
    class Config:
        boost: float = option(0.0, "extra weight of a misclassified adversarial sample", ge=0)

    def __call__(self, batch):
        with torch.no_grad():
            wrong = (batch.logits_adv.argmax(1) != batch.y).float()
            w = 1.0 + self.config.boost * wrong
            return (w / w.mean()).detach()


@hookimpl
def register_weighters(register):
    register("{name}", {cls})
'''

SAMPLER = '''\
"""The sampler '{name}': a few steps of stochastic gradient Langevin dynamics on the energy."""

from dataclasses import dataclass

import torch
from energyat_core.api import Sampler, hookimpl, joint_energy, marginal_energy, option


class {cls}(Sampler):
    """SGLD from uniform noise: x <- x - step * grad E(x) + noise * N(0, 1), clamped to [0,1]."""

    @dataclass
    class Config:
        steps: int = option(10, "Langevin steps", ge=1)
        step_size: float = option(1.0, "gradient step size", gt=0)
        noise: float = option(0.01, "standard deviation of the added noise", ge=0)

    shape = (3, 32, 32)

    def setup(self, ctx):
        if ctx.data is not None:
            self.shape = tuple(ctx.data.train_x.shape[1:])

    def init(self, y):
        return torch.rand(len(y), *self.shape, device=y.device)

    def sample(self, model, x0, y=None):
        cfg = self.config
        x = x0.detach().clone()
        for _ in range(cfg.steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x)
                energy = marginal_energy(logits) if y is None else joint_energy(logits, y)
                (grad,) = torch.autograd.grad(energy.sum(), x)
            x = (x.detach() - cfg.step_size * grad + cfg.noise * torch.randn_like(x)).clamp(0, 1)
        return x.detach()


@hookimpl
def register_samplers(register):
    register("{name}", {cls})
'''

BACKBONE = '''\
"""The backbone '{name}': a tiny convolutional network."""

from dataclasses import dataclass

from energyat_core.api import Backbone, hookimpl, option
from torch import nn


class {cls}(Backbone):
    """Two convolutions and a linear layer (for quick experiments, not for accuracy)."""

    @dataclass
    class Config:
        width: int = option(16, "channels of the first convolution", ge=1)

    def build(self, num_classes):
        w = self.config.width
        return nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, num_classes),
        )


@hookimpl
def register_backbones(register):
    register("{name}", {cls})
'''

TRAIN_TEST = '''\
"""The {kind} '{name}' trains end to end: one tiny epoch on the synthetic dataset, on CPU."""

import math

from energyat_core.testing import TINY_ARGS, quick_train


def test_{ident}_trains(tmp_path):
    args = (*TINY_ARGS, {flags})
    metrics = quick_train(tmp_path / "run", *args, quick=False)
    assert len(metrics) == 1 and math.isfinite(metrics[0]["train_loss"])
'''

SAMPLER_TEST = '''\
"""The sampler '{name}' draws images in [0,1] from a small classifier's energy."""

import torch
from energyat_core.testing import fresh_registry


def test_{ident}_samples():
    registry = fresh_registry()
    model = registry.create("backbone", "small_cnn").build(10)
    sampler = registry.create("sampler", "{name}", steps=3)
    y = torch.arange(4)
    x = sampler.sample(model, sampler.init(y), y)
    assert x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
'''

TRAIN = "`energyat train --{kind} {name}`"
KINDS = {
    # kind: (component template, test template, test flags, README usage line)
    "attack": (ATTACK, TRAIN_TEST, '"--attack", "{name}", "--eps", "4/255", "--set", "attack.step_ratio=0.5"', TRAIN),
    "loss": (LOSS, TRAIN_TEST, '"--loss", "{name}", "--set", "loss.smoothing=0.1"', TRAIN),
    "weighter": (WEIGHTER, TRAIN_TEST, '"--weighter", "{name}", "--set", "weighter.boost=1"', TRAIN),
    "sampler": (SAMPLER, SAMPLER_TEST, "", '`ctx.create("sampler", "{name}")` in a component\'s `setup`'),
    "backbone": (BACKBONE, TRAIN_TEST, '"--backbone", "{name}", "--set", "backbone.width=8"', TRAIN),
}


def write_plugin(name: str, kind: str, out: Path) -> Path:
    """Write the package of plugin ``name`` with one ``kind`` component into ``out / energyat-NAME``."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"plugin name '{name}' is not valid",
            "use lower-case letters, digits and single dashes, starting with a letter, e.g. my-attack",
        )
    if kind not in KINDS:
        raise ConfigError(f"unknown kind '{kind}'", f"use one of {', '.join(KINDS)}")
    target = out / f"energyat-{name}"
    if target.exists():
        raise ConfigError(f"{target} already exists", "choose another NAME or --out DIR, or remove it")
    package = "energyat_" + name.replace("-", "_")
    ident = name.replace("-", "_")
    camel = "".join(part.capitalize() for part in name.split("-"))
    fields = {
        "name": name,
        "kind": kind,
        "package": package,
        "ident": ident,
        "cls": camel + ("" if camel.endswith(kind.capitalize()) else kind.capitalize()),
    }
    component, test, flags, usage = KINDS[kind]
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README.replace("{usage}", usage),
        f"{package}/__init__.py": INIT,
        f"{package}/plugin.py": component,
        f"tests/test_{ident}.py": test.replace("{flags}", flags),
    }
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**fields))
    return target


def add_commands(app: typer.Typer) -> None:
    app.command("new-plugin")(new_plugin)


def new_plugin(
    name: str = typer.Argument(
        ..., metavar="NAME", help="the plugin's name: distribution energyat-NAME, package energyat_NAME"
    ),
    kind: str = typer.Option(..., "--kind", help=f"the kind of its component: {'|'.join(KINDS)}"),
    out: Path = typer.Option(Path("."), "--out", help="the folder to write energyat-NAME/ into"),
) -> None:
    """Start a plugin package: pyproject with the entry point, one working component, a test."""
    target = write_plugin(name, kind, out)
    print(f"wrote {target}: pip install -e {target} && python -m pytest {target / 'tests'}")
