"""Tests of the energyat-bridged plugin: the bridged loss and the ``bat`` preset."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_bridged import Bridged, BridgedConfig
from energyat_core.api import Batch, ConfigError, build_config
from energyat_core.testing import compose_config, fresh_registry
from energyat_trades import Trades


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def data(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 4, 4, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    return x, x_adv, torch.randint(0, 5, (n,), generator=g)


def manual_bridged(model: nn.Module, x, x_adv, y, m: int, beta: float) -> torch.Tensor:
    """The formula written out with a Python loop and torch's own KLDivLoss, per sample."""
    delta = x_adv - x
    ce = F.cross_entropy(model(x), y, reduction="none")
    total = torch.zeros(len(y))
    for i in range(1, m + 1):
        prev, cur = model(x + (i - 1) / m * delta), model(x + i / m * delta)
        kl = nn.KLDivLoss(reduction="none")(F.log_softmax(cur, dim=1), F.softmax(prev, dim=1)).sum(dim=1)
        total = total + kl
    return ce + beta * total


# --- the loss ---------------------------------------------------------------------------------


def test_one_bridge_is_the_trades_loss_with_the_same_adversary():
    model = linear_model()
    x, x_adv, y = data()
    bridged = Bridged(BridgedConfig(m=1))(Batch(model, x, y, x_adv))
    trades = Trades()(Batch(model, x, y, x_adv))
    torch.testing.assert_close(bridged, trades)
    assert bridged.shape == (len(y),)


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("forward", ["separate", "batched"])
def test_sum_of_kls_equals_a_manual_loop(m, forward):
    model = linear_model()
    x, x_adv, y = data()
    ours = Bridged(BridgedConfig(m=m, beta=6.0, forward=forward))(Batch(model, x, y, x_adv))
    torch.testing.assert_close(ours, manual_bridged(model, x, x_adv, y, m, 6.0), atol=1e-6, rtol=1e-5)


def test_bridges_on_logits_by_hand():
    # identity model: the 'images' are logits, so bridge i has logits z + (i/m) (z_adv - z).
    # Two classes, z = (0, 0) -> z_adv = (2 ln 3, 0) with m = 2: the points have p_0 = 1/2, 3/4, 9/10
    z = torch.tensor([[0.0, 0.0]])
    z_adv = torch.tensor([[2 * math.log(3.0), 0.0]])
    y = torch.tensor([1])

    def kl2(a: float, b: float) -> float:
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    expected = math.log(2) + 6 * (kl2(0.5, 0.75) + kl2(0.75, 0.9))
    got = Bridged(BridgedConfig(m=2))(Batch(nn.Identity(), z, y, z_adv))
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_no_perturbation_gives_plain_cross_entropy():
    model = linear_model()
    x, _, y = data()
    out = Bridged()(Batch(model, x, y, x))
    torch.testing.assert_close(out, F.cross_entropy(model(x), y, reduction="none"))


def test_reuses_the_shared_end_point_logits_and_counts_forwards():
    sizes = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = linear_model()

        def forward(self, x):
            sizes.append(len(x))
            return self.net(x)

    x, x_adv, y = data(4)
    batch = Batch(Counting(), x, y, x_adv)
    Bridged(BridgedConfig(m=5))(batch)
    _ = batch.logits_clean, batch.logits_adv
    assert sorted(sizes) == [4] * 6  # x, x_adv, and the 4 inner points: m + 1 forwards of B
    sizes.clear()
    Bridged(BridgedConfig(m=5, forward="batched"))(Batch(Counting(), x, y, x_adv))
    assert sorted(sizes) == [4, 4, 16]  # x, x_adv, and one forward of the (m - 1) * B inner points


def test_gradients_reach_every_point_of_the_chain():
    z = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    z_adv = torch.tensor([[-0.5, 0.9, 0.0]], requires_grad=True)
    Bridged(BridgedConfig(m=3))(Batch(nn.Identity(), z, torch.tensor([0]), z_adv)).sum().backward()
    assert z.grad.abs().sum() > 0 and z_adv.grad.abs().sum() > 0


def test_batched_differs_from_separate_only_through_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5))
    x, x_adv, y = data(8)
    x_adv = (x + 0.2 * (x_adv - x).sign()).clamp(0, 1)  # far enough for the levels to differ
    model.eval()
    sep = Bridged(BridgedConfig(m=4))(Batch(model, x, y, x_adv))
    bat = Bridged(BridgedConfig(m=4, forward="batched"))(Batch(model, x, y, x_adv))
    torch.testing.assert_close(sep, bat, atol=1e-5, rtol=1e-5)
    model.train()
    sep = Bridged(BridgedConfig(m=4))(Batch(model, x, y, x_adv))
    bat = Bridged(BridgedConfig(m=4, forward="batched"))(Batch(model, x, y, x_adv))
    assert not torch.allclose(sep, bat, atol=1e-5)


# --- config, registry, preset ---------------------------------------------------------------------


def test_options_have_help_and_validate():
    for f in dataclasses.fields(BridgedConfig):
        assert f.metadata.get("help"), f.name
    assert "energyat" in dict((f.name, f.metadata["help"]) for f in dataclasses.fields(BridgedConfig))["m"]
    with pytest.raises(ConfigError, match="'m' must be >= 1"):
        build_config(BridgedConfig, {"m": "0"}, "loss 'bridged'")
    with pytest.raises(ConfigError, match="beta"):
        build_config(BridgedConfig, {"beta": "-2"}, "loss 'bridged'")
    with pytest.raises(ConfigError, match="forward"):
        build_config(BridgedConfig, {"forward": "fused"}, "loss 'bridged'")
    assert BridgedConfig() == BridgedConfig(m=5, beta=6.0, forward="separate")


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def test_resolved_preset_is_trades_with_pgd_ats_adversary_and_the_bridged_loss(registry):
    method = registry.method("bat")
    assert "energyat's defaults" in method.help and "attack.objective=kl" in method.help
    pgd_at, trades = registry.method("pgd-at"), registry.method("trades")
    assert method.parts == {
        "attack": pgd_at.parts["attack"],  # PGD on the CE: 10 steps of 2/255 in the 8/255 ball, uniform start
        "loss": ("bridged", {"m": 5, "beta": 6.0}),
        "weighter": ("uniform", {}),
    }
    assert method.parts["attack"] == (
        "pgd",
        {"step_ratio": 0.25, "steps": 10, "objective": "ce", "random_start": "uniform"},
    )
    assert method.settings == trades.settings  # TRADES' CIFAR-10 schedule (and its eval-mode adversary)
    assert method.settings["attack_bn"] == "eval"
    assert method.reference_backbone is None  # no reference number, so no backbone it was measured on
    assert method.settings["epochs"] == 76 and method.settings["weight_decay"] == 2e-4
    assert method.reference


def test_registry_and_preset(registry):
    loss = registry.create("loss", "bridged", m="3")
    assert isinstance(loss, Bridged) and loss.config.m == 3
    assert not next(p for p in registry.plugins if p.name == "bridged").errors
    cfg = compose_config(registry, method="bat")
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["objective"] == "ce" and kw["random_start"] == "uniform" and kw["steps"] == 10
    assert kw["eps"] == pytest.approx(8 / 255) and kw["alpha"] == pytest.approx(2 / 255)
    assert cfg.parts["loss"].config == BridgedConfig(m=5, beta=6.0)
    # the step is PGD-AT's eps/4, whatever the run's radius
    wide = compose_config(registry, method="bat", flags={"eps": 16 / 255})
    kw = wide.parts["attack"].config.pgd_kwargs(wide.threat)
    assert kw["eps"] == pytest.approx(16 / 255) and kw["alpha"] == pytest.approx(4 / 255)
    # the documented KL adversary is two --set flags on top of the preset (its step stays eps/4)
    cfg = compose_config(registry, method="bat", sets=["attack.objective=kl", "attack.random_start=normal"])
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["objective"] == "kl" and kw["random_start"] == "normal" and kw["steps"] == 10
    assert kw["alpha"] == pytest.approx(2 / 255)


# --- end to end -----------------------------------------------------------------------------------


def test_bat_trains_a_more_robust_model_than_standard_training(tmp_path: Path):
    from energyat_core.testing import quick_train

    std = quick_train(tmp_path / "std", "--attack", "none", "--loss", "ce")
    bat = quick_train(tmp_path / "bat", "--method", "bat", "--set", "attack.steps=5")
    assert (tmp_path / "bat" / "model.safetensors").is_file()
    print(f"std: {std[-1]}\nbat: {bat[-1]}")
    assert bat[-1]["robust_acc"] > std[-1]["robust_acc"] + 0.10
    # PGD-5 (5 fwd + 5 bwd) + x, x_adv and 4 inner points, each backpropagated
    assert bat[-1]["fwd_per_sample"] == pytest.approx(5 + 6)
    assert bat[-1]["bwd_per_sample"] == pytest.approx(5 + 6)
