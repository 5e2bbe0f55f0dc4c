"""JEM's SGLD settings, and their conversion from JEM's input units to energyat's.

JEM (Grathwohl et al. 2020; ``train_wrn_ebm.py`` of its released code, ``sample_q``) feeds
the network images scaled to ``[-1, 1]`` (``Normalize((.5, .5, .5), (.5, .5, .5))``) and
runs, ``n_steps = 20`` times::

    x11 <- x11 + sgld_lr * grad_{x11} logsumexp_k f_k + sgld_std * xi,    xi ~ N(0, I)

with ``sgld_lr = 1.0`` and ``sgld_std = 0.01`` (its argparse defaults), from a replay
buffer of ``buffer_size = 10000`` images filled with ``U(-1, 1)`` and restarted from
``U(-1, 1)`` with probability ``reinit_freq = 0.05``. ``logsumexp_k f_k = -E``.

energyat's images are in ``[0, 1]``: ``x01 = (x11 + 1) / 2``. The same network as a function
of ``x01`` has ``grad_{x01} = 2 * grad_{x11}`` (chain rule), and every change of ``x11`` is
half as large in ``x01``. JEM's step is therefore, in our units::

    x01 <- x01 + (sgld_lr / 4) * grad_{x01}(-E) + (sgld_std / 2) * xi

The ``sgld`` sampler's update is ``x <- x - (eta / 2) * grad_x E + sigma * xi`` (momentum 0),
so JEM's step is ``eta = sgld_lr / 2 = 0.5`` and ``sigma = sgld_std / 2 = 0.005`` here: a
quarter of JEM's gradient coefficient (1 -> 0.25) and half its noise. ``U(-1, 1)`` is
``U(0, 1)`` here. (JEM's chains are not clamped; the sampler clamps to [0, 1], which a
chain started in [0, 1] leaves only under a large gradient.)
"""

from __future__ import annotations

#: JEM's SGLD gradient coefficient ``--sgld_lr`` (inputs in [-1, 1])
JEM_SGLD_LR = 1.0
#: JEM's SGLD noise std ``--sgld_std`` (inputs in [-1, 1])
JEM_SGLD_STD = 0.01
#: JEM's SGLD steps per training step ``--n_steps``
JEM_SGLD_STEPS = 20
#: JEM's replay buffer size ``--buffer_size``
JEM_BUFFER_SIZE = 10000
#: JEM's probability of restarting a chain from noise ``--reinit_freq``
JEM_REINIT_FREQ = 0.05


def sgld_from_jem(sgld_lr: float, sgld_std: float) -> tuple[float, float]:
    """The ``sgld`` sampler's ``(eta, sigma)`` on [0, 1] images for JEM's ``(sgld_lr, sgld_std)`` on [-1, 1] images.

    ``eta = sgld_lr / 2`` (the gradient coefficient ``eta / 2`` is a quarter of ``sgld_lr``)
    and ``sigma = sgld_std / 2``; the derivation is in this module's docstring.
    """
    return sgld_lr / 2, sgld_std / 2


#: JEM's step and noise in energyat's units: ``(0.5, 0.005)``
JEM_ETA, JEM_SIGMA = sgld_from_jem(JEM_SGLD_LR, JEM_SGLD_STD)
