"""Tests of the energyat-pgd plugin: attack configs, attacks and presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from energyat_core.api import Attack, ConfigError, build_config, default_step, objective_values
from energyat_core.testing import compose_config, fresh_registry
from energyat_pgd import FGSM, FGSMRS, PGD, FGSMConfig, FGSMRSConfig, PGDConfig

EPS = 8 / 255


def tiny_model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes)
    ).eval()


def batch(n: int = 16, num_classes: int = 10):
    g = torch.Generator().manual_seed(1)
    return 0.1 + 0.8 * torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, num_classes, (n,), generator=g)


# --- configs ---------------------------------------------------------------------------------


def test_pgd_defaults_per_norm():
    linf = PGDConfig().pgd_kwargs()
    assert linf == {
        "eps": EPS,
        "alpha": 2 / 255,
        "steps": 10,
        "norm": "linf",
        "objective": "ce",
        "random_start": "uniform",
        "restarts": 1,
    }
    l2 = PGDConfig(norm="l2").pgd_kwargs()
    assert l2["eps"] == 0.5 and l2["alpha"] == 0.5 / 4
    assert PGDConfig(norm="l2", eps=1.0).resolved_alpha() == 0.25
    assert PGDConfig(eps=0.1, alpha=0.01).pgd_kwargs()["alpha"] == 0.01


def test_pgd_default_step_is_cores_rule():
    # eps/4 from 10 steps on, 2.5 * eps / steps below: core's default_step, for both norms
    for steps in (1, 3, 7, 10, 20):
        assert PGDConfig(steps=steps).resolved_alpha() == default_step(EPS, steps)
        assert PGDConfig(steps=steps, norm="l2").resolved_alpha() == default_step(0.5, steps)
    assert PGDConfig(steps=5).resolved_alpha() == pytest.approx(2.5 * EPS / 5)


def test_fgsm_defaults():
    kw = FGSMConfig().pgd_kwargs()
    assert kw["steps"] == 1 and kw["alpha"] == kw["eps"] == EPS and kw["random_start"] == "none"
    assert FGSMConfig(eps=0.1).resolved_alpha() == 0.1


def test_fgsm_rs_default_alpha_is_1_25_eps():
    kw = FGSMRSConfig().pgd_kwargs()
    assert kw["steps"] == 1 and kw["random_start"] == "uniform"
    assert kw["alpha"] == pytest.approx(1.25 * EPS)
    assert FGSMRSConfig(eps=0.1).resolved_alpha() == pytest.approx(0.125)
    assert FGSMRSConfig(norm="l2").resolved_alpha() == pytest.approx(1.25 * 0.5)


def test_single_step_attacks_have_no_steps_option():
    for cls in (FGSMConfig, FGSMRSConfig):
        names = [f.name for f in dataclasses.fields(cls)]
        assert names == ["eps", "alpha", "norm", "objective", "random_start"]
    assert [f.name for f in dataclasses.fields(PGDConfig)][0] == "eps"


def test_every_option_has_help():
    for cls in (PGDConfig, FGSMConfig, FGSMRSConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), (cls.__name__, f.name)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": "0"}, "'steps' must be >= 1"),
        ({"restarts": "0"}, "'restarts' must be >= 1"),
        ({"eps": "0"}, "'eps' must be > 0"),
        ({"eps": "-1"}, "'eps' must be > 0"),
        ({"alpha": "0"}, "'alpha' must be > 0"),
        ({"norm": "l1"}, "norm"),
        ({"objective": "mse"}, "objective"),
        ({"random_start": "gauss"}, "random_start"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ConfigError, match=match):
        build_config(PGDConfig, options, "attack 'pgd'")


def test_config_validation_of_the_single_step_attacks():
    with pytest.raises(ConfigError, match="eps"):
        build_config(FGSMRSConfig, {"eps": "-8/255"}, "attack 'fgsm-rs'")
    with pytest.raises(ConfigError, match="'alpha' must be > 0"):
        build_config(FGSMConfig, {"alpha": "0"}, "attack 'fgsm'")
    with pytest.raises(ConfigError, match="no option 'steps'"):
        build_config(FGSMConfig, {"steps": "3"}, "attack 'fgsm'")
    cfg = build_config(PGDConfig, {"eps": "16/255", "steps": "7", "norm": "linf"}, "attack 'pgd'")
    assert cfg.eps == pytest.approx(16 / 255) and cfg.steps == 7


# --- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PGD, FGSM, FGSMRS])
def test_attacks_are_attacks_with_a_summary(cls):
    assert issubclass(cls, Attack)
    assert cls.__doc__.strip().splitlines()[0]


@pytest.mark.parametrize(
    "attack",
    [PGD(), PGD(PGDConfig(steps=3, restarts=2, objective="cw")), FGSM(), FGSMRS()],
    ids=["pgd", "pgd-cw-restarts", "fgsm", "fgsm-rs"],
)
def test_attack_output_in_ball_box_and_detached(attack):
    model = tiny_model()
    x, y = batch()
    torch.manual_seed(0)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_pgd_l2_attack_norm_bound():
    model = tiny_model()
    x, y = batch()
    torch.manual_seed(0)
    x_adv = PGD(PGDConfig(norm="l2", steps=3))(model, x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_pgd_attack_increases_the_loss_over_random_noise():
    model = tiny_model()
    x, y = batch(32)
    torch.manual_seed(0)
    noisy = (x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1)
    x_adv = PGD()(model, x, y)
    with torch.no_grad():
        assert objective_values(model(x_adv), y, "ce").mean() > objective_values(model(noisy), y, "ce").mean()


def test_fgsm_on_a_two_class_linear_model_by_hand():
    # logits W x + b with two classes: grad_x CE = (1 - p_y) (w_other - w_y), so FGSM moves
    # every pixel by eps in the direction of sign(w_other - w_y).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x, y = batch(6, num_classes=2)
    w = model[1].weight.detach()
    expected = x + EPS * (w[1 - y] - w[y]).sign().view_as(x)
    assert torch.allclose(FGSM()(model, x, y), expected, atol=1e-6)


def test_fgsm_rs_takes_one_step_of_1_25_eps_from_its_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x, y = batch(6, num_classes=2)
    w = model[1].weight.detach()
    torch.manual_seed(5)
    start = (x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1)
    expected = (x + (start + 1.25 * EPS * (w[1 - y] - w[y]).sign().view_as(x) - x).clamp(-EPS, EPS)).clamp(0, 1)
    torch.manual_seed(5)
    assert torch.allclose(FGSMRS()(model, x, y), expected, atol=1e-6)


def test_attack_under_bf16_autocast():
    model = tiny_model()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = PGD(PGDConfig(steps=2, objective="kl", random_start="normal"))(model, x, y)
    assert x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6


# --- registry and presets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def test_registry_creates_the_attacks(registry):
    attack = registry.create("attack", "pgd", steps="7")
    assert isinstance(attack, PGD) and attack.config.steps == 7 and attack.name == "pgd"
    assert isinstance(registry.create("attack", "fgsm"), FGSM)
    assert isinstance(registry.create("attack", "fgsm-rs"), FGSMRS)
    assert registry.create("attack", "pgd:16/255").config.eps == pytest.approx(16 / 255)
    with pytest.raises(ConfigError):
        registry.create("attack", "pgd", steps="0")
    plugin = next(p for p in registry.plugins if p.name == "pgd")
    assert not plugin.errors


def test_resolved_presets_have_the_expected_parts_and_settings(registry):
    pgd_at = registry.method("pgd-at")
    assert {kind: name for kind, (name, _) in pgd_at.parts.items()} == {
        "attack": "pgd",
        "loss": "ce",
        "weighter": "uniform",
    }
    assert pgd_at.parts["attack"][1] == {
        "eps": 8 / 255,
        "alpha": 2 / 255,
        "steps": 10,
        "objective": "ce",
        "random_start": "uniform",
    }
    assert pgd_at.parts["loss"][1] == pgd_at.parts["weighter"][1] == {}
    s = pgd_at.settings
    assert (s["epochs"], s["optimizer"], s["lr"], s["momentum"], s["weight_decay"], s["batch_size"]) == (
        100,
        "sgd",
        0.1,
        0.9,
        5e-4,
        128,
    )
    assert (s["schedule"], s["milestones"], s["gamma"]) == ("multistep", (0.5, 0.75), 0.1)
    # fgsm-rs: PGD-AT with the single-step attack and Wong et al.'s short cyclic schedule
    fgsm_rs = registry.method("fgsm-rs")
    assert fgsm_rs.parts == {**pgd_at.parts, "attack": ("fgsm-rs", {})}
    assert fgsm_rs.settings == {**pgd_at.settings, "epochs": 15, "lr": 0.2, "schedule": "cyclic", "warmup": 0.4}
    for method in (pgd_at, fgsm_rs):
        assert method.help and method.reference


def test_presets_compose_into_valid_runs(registry):
    for name in ("pgd-at", "fgsm-rs"):
        cfg = compose_config(registry, method=name)  # every part and setting validates
        assert isinstance(registry.create_part("attack", cfg.parts["attack"]), PGD)
    pgd_at = compose_config(registry, method="pgd-at")
    kw = pgd_at.parts["attack"].config.pgd_kwargs()
    assert kw["steps"] == 10 and kw["alpha"] == pytest.approx(2 / 255) and kw["eps"] == pytest.approx(EPS)
    assert pgd_at.milestones == (0.5, 0.75) and pgd_at.schedule == "multistep"
    fgsm_rs = compose_config(registry, method="fgsm-rs")
    assert fgsm_rs.spec("attack") == "fgsm-rs"
    assert fgsm_rs.epochs == 15 and fgsm_rs.lr == 0.2
    assert fgsm_rs.schedule == "cyclic" and fgsm_rs.warmup == pytest.approx(0.4)
