"""Tests of the energyat-pgd plugin: attack configs, attacks and presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from energyat_core.api import (
    Attack,
    ConfigError,
    RunContext,
    ThreatModel,
    build_config,
    default_step,
    objective_values,
)
from energyat_core.testing import compose_config, fresh_registry, lr_at, make_trainer, record_schedule, train_steps
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

LINF = ThreatModel()  # the run's default: 8/255 L-inf
L2 = ThreatModel(eps=0.5, norm="l2")  # the run's default radius for --norm l2


def test_pgd_defaults_in_each_norm():
    linf = PGDConfig().pgd_kwargs(LINF)
    assert linf == {
        "eps": EPS,
        "alpha": 2 / 255,
        "steps": 10,
        "norm": "linf",
        "objective": "ce",
        "random_start": "uniform",
        "restarts": 1,
    }
    l2 = PGDConfig().pgd_kwargs(L2)
    assert (l2["eps"], l2["alpha"], l2["norm"]) == (0.5, 0.5 / 4, "l2")
    assert PGDConfig().pgd_kwargs(ThreatModel(eps=1.0, norm="l2"))["alpha"] == 0.25
    assert PGDConfig(step_ratio=0.1).pgd_kwargs(ThreatModel(eps=0.1))["alpha"] == pytest.approx(0.01)


def test_pgd_default_step_is_cores_rule():
    # eps/4 from 10 steps on, 2.5 * eps / steps below: core's default_step, for both norms
    for steps in (1, 3, 7, 10, 20):
        assert PGDConfig(steps=steps).pgd_kwargs(LINF)["alpha"] == pytest.approx(default_step(EPS, steps))
        assert PGDConfig(steps=steps).pgd_kwargs(L2)["alpha"] == pytest.approx(default_step(0.5, steps))
    assert PGDConfig(steps=5).pgd_kwargs(LINF)["alpha"] == pytest.approx(2.5 * EPS / 5)


def test_the_step_scales_with_eps_and_the_runs_step_overrides_it():
    for cfg, ratio in (
        (PGDConfig(), 0.25),
        (FGSMConfig(), 1.0),
        (FGSMRSConfig(), 1.25),
        (PGDConfig(step_ratio=0.5), 0.5),
    ):
        for eps in (2 / 255, 8 / 255, 16 / 255, 0.5):
            assert cfg.pgd_kwargs(ThreatModel(eps=eps))["alpha"] == pytest.approx(ratio * eps)
        # --step: one absolute step whatever the ratio and the radius
        kw = cfg.pgd_kwargs(ThreatModel(eps=16 / 255, step=1 / 255))
        assert (kw["eps"], kw["alpha"]) == (pytest.approx(16 / 255), 1 / 255)
    assert PGDConfig().pgd_kwargs(ThreatModel(eps=0.0))["alpha"] == 0.0  # --eps 0: clean training


def test_fgsm_defaults():
    kw = FGSMConfig().pgd_kwargs(LINF)
    assert kw["steps"] == 1 and kw["alpha"] == kw["eps"] == EPS and kw["random_start"] == "none"
    assert FGSMConfig().pgd_kwargs(ThreatModel(eps=0.1))["alpha"] == 0.1


def test_fgsm_rs_default_step_is_1_25_eps():
    kw = FGSMRSConfig().pgd_kwargs(LINF)
    assert kw["steps"] == 1 and kw["random_start"] == "uniform"
    assert kw["alpha"] == pytest.approx(1.25 * EPS)
    assert FGSMRSConfig().pgd_kwargs(ThreatModel(eps=0.1))["alpha"] == pytest.approx(0.125)
    assert FGSMRSConfig().pgd_kwargs(L2)["alpha"] == pytest.approx(1.25 * 0.5)


def test_attacks_have_no_radius_norm_or_absolute_step_options():
    # the radius and norm are the run's (--eps, --norm); the step is relative to the radius
    for cls in (FGSMConfig, FGSMRSConfig):
        assert [f.name for f in dataclasses.fields(cls)] == ["step_ratio", "objective", "random_start"]
    names = [f.name for f in dataclasses.fields(PGDConfig)]
    assert names[0] == "steps" and not {"eps", "alpha", "norm"} & set(names)  # pgd:50 is 50 steps
    for cls in (PGD, FGSM, FGSMRS):
        assert set(cls.norms) == {"linf", "l2"}


def test_every_option_has_help():
    for cls in (PGDConfig, FGSMConfig, FGSMRSConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), (cls.__name__, f.name)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": "0"}, "'steps' must be >= 1"),
        ({"restarts": "0"}, "'restarts' must be >= 1"),
        ({"step_ratio": "0"}, "'step_ratio' must be > 0"),
        ({"step_ratio": "-1"}, "'step_ratio' must be > 0"),
        ({"objective": "mse"}, "objective"),
        ({"random_start": "gauss"}, "random_start"),
        ({"eps": "8/255"}, "no option 'eps'"),
        ({"alpha": "2/255"}, "no option 'alpha'"),
        ({"norm": "l2"}, "no option 'norm'"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ConfigError, match=match):
        build_config(PGDConfig, options, "attack 'pgd'")


def test_config_validation_of_the_single_step_attacks():
    with pytest.raises(ConfigError, match="'step_ratio' must be > 0"):
        build_config(FGSMRSConfig, {"step_ratio": "-1.25"}, "attack 'fgsm-rs'")
    with pytest.raises(ConfigError, match="no option 'steps'"):
        build_config(FGSMConfig, {"steps": "3"}, "attack 'fgsm'")
    cfg = build_config(PGDConfig, {"step_ratio": "1/8", "steps": "7"}, "attack 'pgd'")
    assert cfg.step_ratio == pytest.approx(1 / 8) and cfg.steps == 7
    assert build_config(PGDConfig, {"step_ratio": "none"}, "attack 'pgd'").step_ratio is None


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
    x_adv = PGD(PGDConfig(steps=3), threat=L2)(model, x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert (x_adv - x).abs().max() > EPS  # an L2 ball of 0.5, not the default L-inf box


def test_the_attack_takes_the_runs_threat_model_in_setup():
    attack = FGSM()
    assert attack.threat == ThreatModel()  # outside a run: 8/255 L-inf
    run_threat = ThreatModel(eps=16 / 255, norm="linf")
    attack.setup(RunContext(device=torch.device("cpu"), num_classes=2, threat=run_threat))
    assert attack.threat == run_threat
    # every pixel of a linear model moves by the run's 16/255: the attack reaches the run's radius
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x, y = batch(6, num_classes=2)
    delta = attack(model, x, y) - x
    assert torch.allclose(delta.abs(), torch.full_like(delta, 16 / 255), atol=1e-6)


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
    assert registry.create("attack", "pgd:50").config.steps == 50  # name:value sets the first option
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
    assert pgd_at.parts["attack"][1] == {"step_ratio": 0.25, "steps": 10, "objective": "ce", "random_start": "uniform"}
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
    assert s["attack_bn"] == "train"  # Madry et al.'s and Rice et al.'s code make the adversary in train mode
    # fgsm-rs: PGD-AT with the single-step attack and Wong et al.'s short cyclic schedule
    fgsm_rs = registry.method("fgsm-rs")
    assert fgsm_rs.parts == {**pgd_at.parts, "attack": ("fgsm-rs", {"step_ratio": 1.25})}
    assert fgsm_rs.settings == {
        **pgd_at.settings,
        "epochs": 15,
        "lr": 0.2,
        "schedule": "cyclic",
        "warmup": 0.5,
        "momentum_cycle": (0.8, 0.9),
        "attack_bn": "train",
    }
    for method in (pgd_at, fgsm_rs):
        assert method.help and method.reference
    assert (pgd_at.reference_backbone, fgsm_rs.reference_backbone) == ("wrn34_10", "preact_resnet18")
    assert fgsm_rs.reproduce_command() == (
        "energyat train --method fgsm-rs --backbone preact_resnet18 --dataset cifar10"
    )


def test_presets_compose_into_valid_runs(registry):
    for name in ("pgd-at", "fgsm-rs"):
        cfg = compose_config(registry, method=name)  # every part and setting validates
        assert isinstance(registry.create_part("attack", cfg.parts["attack"]), PGD)
        assert cfg.attack_bn == "train"
    pgd_at = compose_config(registry, method="pgd-at")
    kw = pgd_at.parts["attack"].config.pgd_kwargs(pgd_at.threat)
    assert kw["steps"] == 10 and kw["alpha"] == pytest.approx(2 / 255) and kw["eps"] == pytest.approx(EPS)
    assert pgd_at.milestones == (0.5, 0.75) and pgd_at.schedule == "multistep"
    fgsm_rs = compose_config(registry, method="fgsm-rs")
    assert fgsm_rs.spec("attack") == "fgsm-rs"
    assert fgsm_rs.epochs == 15 and fgsm_rs.lr == 0.2
    assert fgsm_rs.schedule == "cyclic" and fgsm_rs.warmup == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("method", "eps", "step"),
    [
        ("pgd-at", None, 2 / 255),  # Madry et al.: 2/255 at 8/255
        ("pgd-at", 16 / 255, 4 / 255),
        ("fgsm-rs", None, 10 / 255),  # Wong et al.: --alpha 10 at --epsilon 8
        ("fgsm-rs", 4 / 255, 5 / 255),  # 1.25 * eps at --eps 4/255
    ],
)
def test_the_presets_training_step_scales_with_the_runs_eps(registry, method, eps, step):
    cfg = compose_config(registry, method=method, flags={"eps": eps})
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert kw["alpha"] == pytest.approx(step)
    assert kw["eps"] == pytest.approx(8 / 255 if eps is None else eps)
    fixed = compose_config(registry, method=method, flags={"eps": eps, "step": 1 / 255})
    assert fixed.parts["attack"].config.pgd_kwargs(fixed.threat)["alpha"] == pytest.approx(1 / 255)


def test_norm_l2_trains_with_the_l2_attack_at_the_l2_default_radius(registry):
    cfg = compose_config(registry, method="pgd-at", flags={"norm": "l2"})
    kw = cfg.parts["attack"].config.pgd_kwargs(cfg.threat)
    assert (kw["norm"], kw["eps"], kw["alpha"]) == ("l2", 0.5, 0.125)


def test_fgsm_rs_lr_peaks_at_half_of_training(registry):
    # Wong et al.'s train_fgsm.py: CyclicLR(base 0, max 0.2, step_size_up = lr_steps / 2)
    cfg = compose_config(registry, method="fgsm-rs")
    total = cfg.epochs * 390  # an even number of steps (15 epochs of 390 batches), so that total/2 is a step
    schedule = {k: getattr(cfg, k) for k in ("schedule", "lr", "milestones", "gamma", "warmup")}
    lrs = [lr_at(step, total, **schedule) for step in range(total + 1)]
    assert lrs[total // 2] == max(lrs) == pytest.approx(0.2)
    assert lrs.index(max(lrs)) == total // 2
    assert lrs[0] == 0 and lrs[total] == 0
    assert lrs[total // 4] == pytest.approx(0.1, rel=1e-3) and lrs[3 * total // 4] == pytest.approx(0.1, rel=1e-3)
    assert lrs[2 * total // 5] == pytest.approx(0.16)  # the old peak at 2/5 of training is on the rise now


def test_fgsm_rs_lr_and_momentum_follow_torchs_cycliclr_as_wong_et_al_use_it(registry, tmp_path):
    # train_fgsm.py: CyclicLR(opt, base_lr=0, max_lr=0.2, step_size_up=lr_steps / 2, step_size_down=lr_steps / 2),
    # whose defaults also cycle the momentum 0.9 -> 0.8 -> 0.9; stepped after every batch
    cfg = compose_config(
        registry,
        method="fgsm-rs",
        flags={**TINY_FLAGS, "epochs": 1},
        sets=["dataset.n_train=128", "dataset.n_test=16"],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    seen = record_schedule(trainer)
    train_steps(trainer)
    total = len(seen)
    assert total == 8
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    cyclic = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.0, max_lr=0.2, step_size_up=total / 2, step_size_down=total / 2
    )
    expected = []
    for _ in range(total):
        expected.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        cyclic.step()
    assert seen == [(pytest.approx(lr), pytest.approx(m)) for lr, m in expected]
    assert seen[total // 2] == (pytest.approx(0.2), pytest.approx(0.8))  # the peak at half of training


#: a trainer small enough for a few real steps on CPU
TINY_FLAGS = {"backbone": "small_cnn", "dataset": "synthetic", "device": "cpu", "batch_size": 16, "eval_n": 16}


class AttackModeSpy:
    """The run's attack, recording the model's ``training`` flag at every forward the attack makes."""

    def __init__(self, attack, model: nn.Module) -> None:
        self.attack, self.inside, self.modes = attack, False, []
        model.register_forward_pre_hook(
            lambda module, args: self.modes.append(module.training) if self.inside else None
        )

    def __call__(self, model, x, y):
        self.inside = True
        try:
            return self.attack(model, x, y)
        finally:
            self.inside = False


@pytest.mark.parametrize("method", ["pgd-at", "fgsm-rs"])
def test_the_presets_make_the_adversary_in_train_mode(registry, tmp_path, method):
    # a real trainer step of the preset: every forward of the attack sees the model in train mode
    cfg = compose_config(
        registry,
        method=method,
        flags=TINY_FLAGS,
        sets=["dataset.n_train=32", "dataset.n_test=16", *(["attack.steps=2"] if method == "pgd-at" else [])],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    spy = AttackModeSpy(trainer.components["attack"], trainer.model)
    trainer.components["attack"] = spy
    train_steps(trainer)
    assert len(spy.modes) >= 2 and all(spy.modes), spy.modes  # two batches; every forward in train mode
    assert trainer.model.training  # and the loss is computed in train mode after it
    flipped = compose_config(registry, method=method, flags={"attack_bn": "eval"})
    assert flipped.attack_bn == "eval"  # --attack-bn overrides the preset
