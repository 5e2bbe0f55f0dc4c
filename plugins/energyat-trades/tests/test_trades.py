"""Tests of the energyat-trades plugin: the KL term, the TRADES loss and the ``trades`` preset."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.api import Batch, ConfigError, build_config, kl_per_sample
from energyat_core.testing import compose_config, fresh_registry, lr_at, make_trainer, record_modes, train_steps
from energyat_trades import Trades, TradesConfig
from energyat_trades.plugin import TRADES_STEP_RATIO

LN2 = math.log(2.0)
#: a shorter quick_train run for the end-to-end tests
FAST = ("--epochs", "3", "--eval-n", "250")


def logits_of(*probs: list[float], shift: float = 0.0) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (any constant shift leaves the softmax unchanged)."""
    return torch.tensor(probs, dtype=torch.float64).log().float() + shift


def logit_batch(clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> Batch:
    """A batch whose model is the identity: the 'images' are the logits themselves."""
    return Batch(nn.Identity(), clean, y, adv)


# --- the KL term (core's kl_per_sample, which the TRADES loss uses) on hand-computed cases ----


def test_kl_on_hand_computed_distributions():
    p = logits_of([0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], shift=1.3)
    q = logits_of([0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25], shift=-0.7)
    # KL(p||q) = sum_k p_k log(p_k / q_k)
    # row 0: 0.5 ln 2 + 0.25 ln(1/2) + 0 = 0.25 ln 2; row 1: identical -> 0;
    # row 2: (1/3) ln(2/3) + (2/3) ln(4/3) = (1/3) ln(32/27)
    expected = torch.tensor([0.25 * LN2, 0.0, math.log(32 / 27) / 3])
    got = kl_per_sample(p, q)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # KL is not symmetric: row 0 reversed is 0.25 ln 2 as well, row 2 reversed differs
    assert kl_per_sample(q, p)[2].item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-6)


def test_kl_is_finite_for_extreme_logits_and_computed_in_float32():
    p = torch.tensor([[80.0, -80.0, 0.0]], dtype=torch.bfloat16)
    q = torch.tensor([[-80.0, 80.0, 0.0]], dtype=torch.bfloat16)
    kl = kl_per_sample(p, q)
    assert kl.dtype == torch.float32 and torch.isfinite(kl).all()
    assert kl.item() == pytest.approx(160.0, rel=1e-3)  # p is one-hot on class 0: -log q_0 = 160


# --- the TRADES loss ----------------------------------------------------------------------


def test_trades_loss_by_hand():
    clean = logits_of([0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3])
    adv = logits_of([0.25, 0.5, 0.25], [0.5, 0.25, 0.25])
    y = torch.tensor([0, 2])
    loss = Trades()(logit_batch(clean, adv, y))
    # row 0: CE = -ln 0.5 = ln 2, KL = 0.25 ln 2 -> ln 2 + 6 * 0.25 ln 2 = 2.5 ln 2
    # row 1: CE = ln 3, KL = (1/3) ln(32/27)
    expected = torch.tensor([2.5 * LN2, math.log(3) + 6 * math.log(32 / 27) / 3])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    # beta scales the KL term only
    loss1 = Trades(TradesConfig(beta=1.0))(logit_batch(clean, adv, y))
    torch.testing.assert_close(loss1, torch.tensor([1.25 * LN2, math.log(3) + math.log(32 / 27) / 3]))


def test_trades_ce_on_adv_by_hand():
    clean = logits_of([0.5, 0.25, 0.25])
    adv = logits_of([0.25, 0.5, 0.25])
    y = torch.tensor([0])
    loss = Trades(TradesConfig(ce_on="adv"))(logit_batch(clean, adv, y))
    # CE on x_adv: -ln 0.25 = 2 ln 2; the KL term keeps p(x) || p(x_adv): 0.25 ln 2
    assert loss.item() == pytest.approx(2 * LN2 + 6 * 0.25 * LN2, abs=1e-6)


def test_trades_beta_zero_is_cross_entropy_and_no_attack_gives_zero_kl():
    torch.manual_seed(0)
    clean, adv = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(clean, y, reduction="none")
    torch.testing.assert_close(Trades(TradesConfig(beta=0.0))(logit_batch(clean, adv, y)), ce)
    # x_adv is x (attack "none"): the KL term vanishes exactly
    torch.testing.assert_close(Trades()(Batch(nn.Identity(), clean, y, clean)), ce)


def test_gradients_flow_through_both_clean_and_adversarial_logits():
    clean = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    adv = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    Trades()(logit_batch(clean, adv, torch.tensor([0]))).sum().backward()
    p, q = F.softmax(clean.detach(), 1), F.softmax(adv.detach(), 1)
    # d/d adv of KL(p||q) = q - p (times beta); d/d clean of CE + beta KL by autograd on the formula
    torch.testing.assert_close(adv.grad, 6 * (q - p))
    ref = clean.detach().clone().requires_grad_(True)
    (
        F.cross_entropy(ref, torch.tensor([0])) + 6 * (F.softmax(ref, 1) * (F.log_softmax(ref, 1) - q.log())).sum()
    ).backward()
    torch.testing.assert_close(clean.grad, ref.grad)
    assert clean.grad.abs().sum() > 0


def test_engine_mean_equals_the_authors_batch_formula():
    # the engine averages the per-sample losses; TRADES' code computes
    # CE(mean) + beta * KLDivLoss(sum) / B on the whole batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.rand(8, 3, 2, 2)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 5, (8,))
    ours = Trades()(Batch(model, x, y, x_adv)).mean()
    logits, logits_adv = model(x), model(x_adv)
    theirs = F.cross_entropy(logits, y) + 6.0 * nn.KLDivLoss(reduction="sum")(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1)
    ) / len(y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_loss_uses_the_batch_shared_logits():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x

    torch.manual_seed(0)
    batch = Batch(Counting(), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 3))
    Trades()(batch)
    _ = batch.logits_clean, batch.logits_adv  # a weighter reading them costs nothing more
    assert calls == [4, 4]


# --- config, registry, preset ---------------------------------------------------------------


def test_options_have_help_and_validate():
    for f in dataclasses.fields(TradesConfig):
        assert f.metadata.get("help"), f.name
    with pytest.raises(ConfigError, match="'beta' must be >= 0"):
        build_config(TradesConfig, {"beta": "-1"}, "loss 'trades'")
    with pytest.raises(ConfigError, match="ce_on"):
        build_config(TradesConfig, {"ce_on": "both"}, "loss 'trades'")
    assert build_config(TradesConfig, {"beta": "3", "ce_on": "adv"}, "loss 'trades'") == TradesConfig(3.0, "adv")


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def test_resolved_preset_has_the_expected_parts_and_settings(registry):
    method = registry.method("trades")
    assert method.based_on is None  # TRADES' own recipe (its adversary runs in eval mode, PGD-AT's will not)
    assert method.parts["attack"] == (
        "pgd",
        {"step_ratio": TRADES_STEP_RATIO, "steps": 10, "objective": "kl", "random_start": "normal"},
    )
    assert abs(TRADES_STEP_RATIO * 8 / 255 - 0.007) < 1e-12  # their code: step 0.007 at epsilon 0.031
    assert (method.parts["loss"], method.parts["weighter"]) == (("trades", {"beta": 6.0}), ("uniform", {}))
    s = method.settings
    assert (s["epochs"], s["optimizer"], s["lr"], s["momentum"], s["weight_decay"], s["batch_size"]) == (
        76,
        "sgd",
        0.1,
        0.9,
        2e-4,
        128,
    )
    assert (s["schedule"], s["milestones"], s["gamma"]) == ("multistep", (74 / 76,), 0.1)
    assert s["attack_bn"] == "eval"  # their trades_loss calls model.eval() before the inner maximisation
    assert method.reference and "84.92" in method.reference and "53.08" in method.reference
    assert method.reference_backbone == "wrn34_10"
    assert method.reproduce_command() == "energyat train --method trades --backbone wrn34_10 --dataset cifar10"


def test_registry_and_preset(registry):
    loss = registry.create("loss", "trades", beta="2")
    assert isinstance(loss, Trades) and loss.config.beta == 2.0
    assert not next(p for p in registry.plugins if p.name == "trades").errors
    cfg = compose_config(registry, method="trades")
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["objective"] == "kl" and kw["random_start"] == "normal" and kw["steps"] == 10
    assert kw["eps"] == pytest.approx(8 / 255) and kw["alpha"] == pytest.approx(0.007)
    assert cfg.attack_bn == "eval"
    assert cfg.parts["loss"].config == TradesConfig(beta=6.0, ce_on="clean")
    assert cfg.spec("weighter") == "uniform"
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (76, 0.1, 0.9, 2e-4, 128)
    assert cfg.schedule == "multistep" and cfg.gamma == 0.1
    # the lr drops x0.1 exactly when the authors' epoch 75 (1-based) starts
    per_epoch = 391
    kwargs = dict(schedule=cfg.schedule, lr=cfg.lr, milestones=cfg.milestones, gamma=cfg.gamma)
    assert lr_at(74 * per_epoch - 1, 76 * per_epoch, **kwargs) == pytest.approx(0.1)
    assert lr_at(74 * per_epoch, 76 * per_epoch, **kwargs) == pytest.approx(0.01)


@pytest.mark.parametrize(("eps", "step"), [(None, 0.007), (16 / 255, 0.014), (4 / 255, 0.0035)])
def test_the_trades_step_is_0_007_at_8_255_and_scales_with_eps(registry, eps, step):
    cfg = compose_config(registry, method="trades", flags={"eps": eps})
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["alpha"] == pytest.approx(step) and kw["eps"] == pytest.approx(eps or 8 / 255)
    assert kw["alpha"] * kw["steps"] == pytest.approx(2.231 * kw["eps"], rel=1e-3)  # 10 steps reach past the edge
    fixed = compose_config(registry, method="trades", flags={"eps": eps, "step": 2 / 255})
    assert fixed.parts["attack"].config.pgd_kwargs(fixed.threat)["alpha"] == pytest.approx(2 / 255)  # --step


def test_the_trades_preset_makes_the_adversary_in_eval_mode(registry, tmp_path):
    # a real trainer step of the preset: every forward of the KL attack sees the model in eval
    # mode (BatchNorm running statistics), the loss's forwards see it in train mode
    cfg = compose_config(
        registry,
        method="trades",
        flags={"backbone": "small_cnn", "dataset": "synthetic", "device": "cpu", "batch_size": 16, "eval_n": 16},
        sets=["dataset.n_train=32", "dataset.n_test=16", "attack.steps=2"],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    modes = record_modes(trainer)
    train_steps(trainer)
    assert len(modes[True]) == 2 * 3 and not any(modes[True])  # 2 batches x (p(x) + 2 steps), all in eval mode
    assert modes[False] and all(modes[False])  # the loss: train mode


# --- end to end -----------------------------------------------------------------------------------


def test_trades_trains_a_more_robust_model_than_standard_training(tmp_path: Path):
    from energyat_core.testing import quick_train

    # quick_train's CPU setting, shortened: 3 epochs, PGD-3 inner maximisation, 250 evaluation images
    std = quick_train(tmp_path / "std", "--attack", "none", "--loss", "ce", *FAST)
    trades = quick_train(tmp_path / "trades", "--method", "trades", "--set", "attack.steps=3", *FAST)
    assert (tmp_path / "trades" / "model.safetensors").is_file()
    print(f"std: {std[-1]}\ntrades: {trades[-1]}")
    # observed (seed 0): standard training 0.89 clean / 0.00 PGD-10, TRADES 0.71 / 0.56
    assert trades[-1]["robust_acc"] > std[-1]["robust_acc"] + 0.2
    # the KL attack: 1 forward for p(x) + 3 steps (forward + backward); the loss: x and x_adv, both backpropagated
    assert trades[-1]["fwd_per_sample"] == pytest.approx(1 + 3 + 2)
    assert trades[-1]["bwd_per_sample"] == pytest.approx(3 + 2)
