"""Tests of the energyat-weat plugin: the energy weighter and the ``weat`` preset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.api import Batch, marginal_energy
from energyat_core.testing import compose_config, fresh_registry, make_trainer, record_schedule, train_steps
from energyat_trades import Trades, TradesConfig
from energyat_weat import EnergyWeighter, energy_weights


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def engine_objective(loss, weighter, batch: Batch) -> torch.Tensor:
    """The engine's objective: the weighted mean of the per-sample losses."""
    per_sample = loss(batch)
    weights = weighter(batch)
    return (weights.detach().float() * per_sample.float()).mean()


def small_batch(n: int = 8) -> Batch:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 4, 4, generator=g)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    return Batch(model, x, torch.randint(0, 5, (n,), generator=g), x_adv)


# --- the weights -------------------------------------------------------------------------------


def test_weights_on_hand_computed_energies():
    c = math.log(3.0)
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # E = -ln 3            -> w = 1 / ln(1 + 3) = 1 / ln 4
            [-c, -c, -c],  # E = 0                  -> w = 1 / ln 2 (the largest weight)
            [1 - c, 1 - c, 1 - c],  # E = -1        -> w = 1 / ln(1 + e)
            [-1 - c, -1 - c, -1 - c],  # E = +1     -> the same weight: |E| is used
            [20.0, 0.0, 0.0],  # E ~ -20            -> w ~ 1/20
        ]
    )
    torch.testing.assert_close(marginal_energy(logits)[:4], torch.tensor([-c, 0.0, -1.0, 1.0]))
    expected = torch.tensor(
        [1 / math.log(4.0), 1 / math.log(2.0), 1 / math.log(1 + math.e), 1 / math.log(1 + math.e), 1 / 20.0]
    )
    w = energy_weights(logits)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, expected, atol=2e-5, rtol=1e-4)
    # the same through the component, on the batch's clean logits (x is ignored by the weights)
    batch = Batch(nn.Identity(), logits, torch.zeros(5, dtype=torch.long), logits + 5.0)
    torch.testing.assert_close(EnergyWeighter()(batch), w)


def test_weights_carry_no_gradient():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], requires_grad=True)
    w = EnergyWeighter()(Batch(nn.Identity(), logits, torch.tensor([0, 1]), logits))
    assert not w.requires_grad and w.grad_fn is None
    # used as a factor, w is a constant: d/dz sum_i w_i * sum_k z_ik = w_i for every k
    (w[:, None] * logits).sum().backward()
    torch.testing.assert_close(logits.grad, w[:, None].expand(2, 3))


def test_weights_use_the_clean_logits_under_bf16():
    logits = torch.tensor([[4.0, 1.0, -3.0]], dtype=torch.bfloat16)
    w = energy_weights(logits)
    assert w.dtype == torch.float32
    assert w.item() == pytest.approx(1 / F.softplus(torch.logsumexp(logits.float(), 1)).item(), rel=1e-6)


# --- WEAT = weighted TRADES ------------------------------------------------------------------


def test_weat_objective_is_the_weighted_trades_formula():
    batch = small_batch()
    beta = 6.0
    objective = engine_objective(Trades(), EnergyWeighter(), batch)
    logits, logits_adv = batch.logits_clean.detach(), batch.logits_adv.detach()
    w = 1 / torch.log(1 + torch.exp(torch.logsumexp(logits, 1).abs()))
    ce = F.cross_entropy(logits, batch.y, reduction="none")
    kl = (F.softmax(logits, 1) * (F.log_softmax(logits, 1) - F.log_softmax(logits_adv, 1))).sum(1)
    expected = (w * ce).mean() + beta * (w * kl).mean()  # (1/B) sum w CE + beta (1/B) sum w KL
    torch.testing.assert_close(objective, expected, atol=1e-6, rtol=1e-5)
    # variant "adv": the CE term on x_adv, weights still from the clean energy
    objective_adv = engine_objective(Trades(TradesConfig(ce_on="adv")), EnergyWeighter(), batch)
    ce_adv = F.cross_entropy(logits_adv, batch.y, reduction="none")
    torch.testing.assert_close(objective_adv, (w * ce_adv).mean() + beta * (w * kl).mean(), atol=1e-6, rtol=1e-5)


def test_weat_with_unit_weights_is_trades(monkeypatch, registry):
    batch = small_batch()
    trades = engine_objective(Trades(), registry.create("weighter", "uniform"), batch)
    monkeypatch.setattr("energyat_weat.weighter.energy_weights", lambda logits: torch.ones(len(logits)))
    weat = engine_objective(Trades(), EnergyWeighter(), batch)
    torch.testing.assert_close(weat, trades)
    torch.testing.assert_close(trades, Trades()(batch).mean())
    # and its gradients are TRADES' too
    g_weat = torch.autograd.grad(weat, list(batch.model.parameters()), retain_graph=True)
    g_trades = torch.autograd.grad(trades, list(batch.model.parameters()))
    for a, b in zip(g_weat, g_trades, strict=True):
        torch.testing.assert_close(a, b)


def test_weights_differ_from_uniform_on_a_real_batch(registry):
    # guards the test above: the real weights are not all 1, so WEAT and TRADES differ
    batch = small_batch()
    assert not torch.allclose(EnergyWeighter()(batch), torch.ones(8))
    assert not torch.allclose(
        engine_objective(Trades(), EnergyWeighter(), batch),
        engine_objective(Trades(), registry.create("weighter", "uniform"), batch),
    )


def test_energy_weighter_with_cross_entropy_adds_one_clean_forward(registry):
    sizes = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))

        def forward(self, x):
            sizes.append(len(x))
            return self.net(x)

    b = small_batch()
    batch = Batch(Counting(), b.x, b.y, b.x_adv)
    objective = engine_objective(registry.create("loss", "ce"), EnergyWeighter(), batch)
    assert sizes == [8, 8] and torch.isfinite(objective)


# --- registry and preset ------------------------------------------------------------------------


def test_resolved_preset_is_trades_weighted_by_the_energy(registry):
    method = registry.method("weat")
    trades = registry.method("trades")
    assert {kind: name for kind, (name, _) in method.parts.items()} == {
        "attack": "pgd",
        "loss": "trades",
        "weighter": "energy",
    }
    assert method.parts["loss"] == ("trades", {"beta": 6.0, "ce_on": "clean"})  # variant "nat"
    # TRADES' KL adversary from x + 0.001 N(0, I), with WEAT's own step: their parser.py --step-size 2/255
    # (eps/4), not TRADES' 0.007
    assert method.parts["attack"] == (
        "pgd",
        {"step_ratio": 0.25, "steps": 10, "objective": "kl", "random_start": "normal"},
    )
    assert method.reference_backbone == "resnet18" and trades.reference_backbone == "wrn34_10"  # never inherited
    assert method.reproduce_command() == "energyat train --method weat --backbone resnet18 --dataset cifar10"
    # WEAT's schedule; the multistep milestones inherited from TRADES are unused by onecycle
    assert method.settings == {
        **trades.settings,
        "epochs": 100,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup": 0.25,
        "momentum_cycle": (0.85, 0.95),  # torch's OneCycleLR defaults, which their main.py keeps
    }
    assert {k: method.settings[k] for k in ("optimizer", "lr", "momentum", "batch_size")} == {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "batch_size": 128,
    }


def test_registry_and_preset(registry):
    assert isinstance(registry.create("weighter", "energy"), EnergyWeighter)
    assert not next(p for p in registry.plugins if p.name == "weat").errors
    cfg = compose_config(registry, method="weat")
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["objective"] == "kl" and kw["random_start"] == "normal" and kw["steps"] == 10
    assert kw["eps"] == pytest.approx(8 / 255) and kw["alpha"] == pytest.approx(2 / 255)  # their --step-size
    assert cfg.attack_bn == "eval"  # WEAT_nat calls model.eval() before the inner maximisation, as TRADES
    assert (cfg.spec("loss"), cfg.spec("weighter")) == ("trades", "energy")
    assert cfg.parts["loss"].config == TradesConfig(beta=6.0, ce_on="clean")  # variant "nat"
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (100, 0.1, 0.9, 5e-4, 128)
    assert cfg.schedule == "onecycle" and cfg.warmup == 0.25
    # variant "adv" is one flag away
    cfg_adv = compose_config(registry, method="weat", sets=["loss.ce_on=adv"])
    assert cfg_adv.parts["loss"].config.ce_on == "adv"
    # the weighter composes with any loss, e.g. energy-weighted PGD-AT
    cfg_pgd = compose_config(registry, method="pgd-at", flags={"weighter": "energy"})
    assert (cfg_pgd.spec("attack"), cfg_pgd.spec("loss"), cfg_pgd.spec("weighter")) == ("pgd", "ce", "energy")


def test_weat_cycles_lr_and_momentum_as_torchs_onecyclelr(registry, tmp_path):
    # their main.py: OneCycleLR(max_lr=0.1, pct_start=0.25), stepped per batch, with its default
    # momentum cycle 0.95 -> 0.85 (at the lr's peak) -> 0.95; the trainer sets both before every batch
    cfg = compose_config(
        registry,
        method="weat",
        flags={
            "backbone": "small_cnn",
            "dataset": "synthetic",
            "device": "cpu",
            "batch_size": 16,
            "eval_n": 16,
            "epochs": 1,
        },
        sets=["dataset.n_train=128", "dataset.n_test=16", "attack.steps=1"],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    seen = record_schedule(trainer)
    train_steps(trainer)
    lrs, momenta = zip(*seen, strict=True)
    assert len(seen) == 8
    assert (lrs[0], momenta[0]) == (pytest.approx(0.1 / 25), pytest.approx(0.95))  # OneCycleLR's start
    assert (lrs[2], momenta[2]) == (pytest.approx(0.1), pytest.approx(0.85))  # the peak, at 25% of training
    assert lrs[0] < lrs[1] < lrs[2] and momenta[0] > momenta[1] > momenta[2]  # lr rises while momentum falls
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # then the lr anneals ...
    assert all(a < b for a, b in zip(momenta[2:], momenta[3:], strict=False))  # ... and momentum climbs back


# --- end to end -----------------------------------------------------------------------------------


def test_weat_trains_a_more_robust_model_than_standard_training(tmp_path: Path):
    from energyat_core.testing import quick_train

    # quick_train's CPU setting, shortened: 3 epochs, PGD-3 inner maximisation, 250 evaluation images
    fast = ("--epochs", "3", "--eval-n", "250")
    std = quick_train(tmp_path / "std", "--attack", "none", "--loss", "ce", *fast)
    # quick_train's cosine schedule replaces WEAT's OneCycle, so the preset's momentum cycle goes too
    weat = quick_train(tmp_path / "weat", "--method", "weat", "--set", "attack.steps=3", "--momentum-cycle", "", *fast)
    assert (tmp_path / "weat" / "model.safetensors").is_file()
    print(f"std: {std[-1]}\nweat: {weat[-1]}")
    # observed (seed 0): standard training 0.89 clean / 0.00 PGD-10, WEAT 0.70 / 0.44
    assert weat[-1]["robust_acc"] > std[-1]["robust_acc"] + 0.2
    # TRADES' passes: the weighter reads the loss's clean logits and adds no forward pass
    assert weat[-1]["fwd_per_sample"] == pytest.approx(1 + 3 + 2)
    assert weat[-1]["bwd_per_sample"] == pytest.approx(3 + 2)
