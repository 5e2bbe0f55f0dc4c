"""The one mode switch and the one BatchNorm freezer."""

from __future__ import annotations

import torch
from torch import nn

from energyat_core.modes import frozen_running_stats, model_mode


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, momentum=None))


def test_model_mode_restores_the_mode_even_after_an_error():
    net = _net().train()
    with model_mode(net, training=False):
        assert not net.training and not net[1].training
    assert net.training and net[1].training
    net.eval()
    try:
        with model_mode(net, training=True):
            assert net.training
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not net.training


def test_frozen_running_stats_uses_batch_statistics_and_changes_nothing():
    torch.manual_seed(0)
    net = _net().train()
    net(torch.randn(8, 3, 6, 6))  # some running statistics to keep
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    with frozen_running_stats(net):
        frozen_out = net(x)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and counters bit-identical
    assert net[1].momentum == 0.1 and net[3].momentum is None  # momenta restored
    assert torch.allclose(frozen_out, net(x), atol=1e-6)  # same batch statistics as a normal train pass
