"""The plugin contract of energyat: read this file first if you write a plugin.

A plugin is a module exposed through an entry point in the ``energyat`` group::

    [project.entry-points.energyat]
    my_plugin = "my_package.plugin"

The module implements any of the hooks below, each decorated with
:data:`energyat_core.hookimpl`. Every ``register_*`` hook receives a ``register``
callback; call it once per component you provide::

    from dataclasses import dataclass
    from energyat_core.api import Attack, hookimpl, option

    class MyAttack(Attack):
        '''One line that ``energyat describe attack my-attack`` shows.'''

        @dataclass
        class Config:
            steps: int = option(10, "gradient steps", ge=1)   # one line per option

        def perturb(self, model, x, y): ...

    @hookimpl
    def register_attacks(register):
        register("my-attack", MyAttack)

``register(name, cls)`` takes a component class: a subclass of the kind's base class (all
in :mod:`energyat_core.api`) with a ``Config`` dataclass whose fields are declared with
``option(default, help, bounds)``; ``energyat describe``, ``--set``, config files and the
validation all come from that declaration. Names are unique per kind across all
installed plugins; a duplicate is reported by ``energyat plugins`` and skipped.
energyat's own components are registered through exactly these hooks
(:mod:`energyat_core.core_plugin`). Plugins import only :mod:`energyat_core.api` from core.

There is one ``register_<kind>s`` hook per kind of component; the kinds themselves (base
class, hook, command-line flag, help) are declared once, in :mod:`energyat_core.kinds`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("energyat")
hookimpl = pluggy.HookimplMarker("energyat")


@hookspec
def register_attacks(register):
    """Register attacks: how ``x_adv`` is found for a training batch.

    Called once when the registry is built. ``register(name, cls)`` with ``cls`` a
    subclass of :class:`energyat_core.api.Attack`. An attack may hold trainable
    parts of its own (e.g. FGSM-SDI's generator and its optimiser): it creates them in
    ``setup(ctx)`` and returns them from ``state_dict()`` so that checkpoints and
    ``--resume`` keep them.
    """


@hookspec
def register_losses(register):
    """Register training losses: what the model minimises, per sample.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Loss`. A loss returns one value per sample; the
    engine multiplies by the weighter's weights and averages over the batch. A loss may
    own helpers (a sampler and its replay buffer, for example) created in ``setup(ctx)``.
    """


@hookspec
def register_weighters(register):
    """Register sample weighters: how much each sample counts in the batch mean.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Weighter`. Weighters see the whole
    :class:`~energyat_core.api.Batch`, including the clean logits, and return
    detached per-sample weights.
    """


@hookspec
def register_samplers(register):
    """Register samplers: how images are drawn from the classifier's energy.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Sampler`. Samplers serve both training (losses
    that need model samples) and generation (commands that write images).
    """


@hookspec
def register_backbones(register):
    """Register backbones: the networks a classifier is built from.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Backbone`, whose ``build(num_classes)`` returns an
    ``nn.Module`` mapping normalised images to logits. Normalisation is added by core.
    """


@hookspec
def register_datasets(register):
    """Register datasets: where training and test images come from.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Dataset`, whose ``load(data_dir)`` returns an
    :class:`energyat_core.api.ImageData`. The first field of its ``Config`` can be given
    after a colon on the command line (``--dataset imagefolder:PATH``).
    """


@hookspec
def register_sources(register):
    """Register extra data sources mixed into every training batch.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.DataSource`. With ``--source NAME[:VALUE]`` the
    engine asks the source for extra labelled images at every step and trains on the
    real batch and the extra images together, shuffled (e.g. proxy-distribution data:
    ``--source proxy:samples.npz``). An epoch stays one pass over the real data.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators: attacks used to measure robustness after training.

    ``register(name, cls)`` with ``cls`` a subclass of
    :class:`energyat_core.api.Evaluator`. ``energyat eval`` runs the requested
    evaluators and reports the per-point worst case over all of them.
    """


@hookspec
def register_methods(register):
    """Register method presets: named bundles of components and training defaults.

    ``register(method)`` with ``method`` an :class:`energyat_core.api.Method`: parts
    (component and options per run kind) and run settings. A preset that extends another
    says ``based_on="NAME"`` instead of importing it. ``energyat train --method NAME``
    starts from it; any flag overrides it.
    """


@hookspec
def register_commands(app):
    """Add subcommands to the ``energyat`` command line.

    ``app`` is the root :class:`typer.Typer`; add commands with ``@app.command()``.
    Called once, when the CLI starts.
    """
