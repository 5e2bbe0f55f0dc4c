"""Switching a model's mode for a while, and putting everything back afterwards.

The one implementation of "set train/eval mode, run something, restore the mode" and of
"let BatchNorm use batch statistics without touching its running statistics", for the
engine, evaluation, plotting and every plugin (through :mod:`energyat_core.api`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Within the block the model is in train (``True``) or eval mode; its mode is restored after."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, BatchNorm layers leave their running statistics exactly as they were.

    Train-mode layers still normalise with batch statistics (their momentum is set to 0,
    so ``running = (1 - 0) * running + 0 * batch`` is unchanged bit for bit, and the batch
    counter is restored on exit). Use it for forward passes that must not leak into the
    statistics the model is evaluated with (model samples, a generator's update).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.detach().clone()) for m in layers
    ]
    for m in layers:
        m.momentum = 0.0
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (momentum, counter) in zip(layers, saved, strict=True):
                m.momentum = momentum
                if counter is not None and m.num_batches_tracked is not None:
                    m.num_batches_tracked.copy_(counter)
