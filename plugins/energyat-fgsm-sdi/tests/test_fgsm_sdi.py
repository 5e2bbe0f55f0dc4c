"""Unit tests of the energyat-fgsm-sdi plugin: generator, attack formula, generator updates, state, preset."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.api import (
    Attack,
    Batch,
    ConfigError,
    RunContext,
    ThreatModel,
    build_config,
    smoothed_cross_entropy,
)
from energyat_core.testing import (
    TINY_ARGS,
    assert_one_line_error,
    compose_config,
    fresh_registry,
    load_state,
    lr_at,
    make_trainer,
    record_modes,
    run_cli,
    save_state,
    train_steps,
)
from energyat_fgsm_sdi import FGSMSDI, FGSMSDIConfig, Generator
from energyat_fgsm_sdi.attack import input_grad_sign

EPS = 8 / 255


def make_attack(eps: float = EPS, step: float | None = None, **options) -> FGSMSDI:
    """The attack set up as a run with threat model ``eps`` (L-inf) and ``--step step`` would set it up."""
    attack = FGSMSDI(FGSMSDIConfig(**options))
    threat = ThreatModel(eps=eps, norm="linf", step=step)
    attack.setup(RunContext(device=torch.device("cpu"), num_classes=10, seed=0, threat=threat))
    return attack


def small_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def images(n: int = 16, size: int = 8, seed: int = 1, num_classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, torch.randint(0, num_classes, (n,), generator=g)


class TwoClassLinear(nn.Module):
    """logits = [0, <w, x>]: for label 0 the CE input gradient is p_1 * w, for label 1 it is -p_0 * w."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


# --- the generator ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [EPS, 0.5])
def test_generator_output_lies_in_the_eps_ball(eps):
    torch.manual_seed(0)
    gen = Generator(eps, channels=16)
    # random inputs, including large ones that saturate tanh
    inputs = torch.cat([torch.rand(8, 3, 12, 12), torch.randn(8, 3, 12, 12).sign()], 1)
    for mode in (True, False):
        gen.train(mode)
        for scale in (1.0, 1e3):
            out = gen(inputs * scale)
            assert out.shape == (8, 3, 12, 12)
            assert out.abs().max() <= eps
            assert out.abs().max() > 0.05 * eps  # not trivially zero


def test_generator_architecture_matches_the_spec():
    gen = Generator(EPS)
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    assert shapes["stem.0.weight"] == (64, 6, 3, 3)  # conv3x3 6 -> 64 on [x, sign g]
    assert "stem.0.bias" not in shapes  # followed by BN
    assert shapes["stem.1.weight"] == (64,)  # BN with affine parameters after the first conv
    assert shapes["block.conv1.weight"] == shapes["block.conv2.weight"] == (64, 64, 3, 3)  # one residual block
    assert shapes["head.weight"] == (3, 64, 3, 3) and shapes["head.bias"] == (3,)
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.affine for m in bns] == [True, False, False, False]  # only the stem's BN is affine
    assert gen.head_bn.affine is False  # "BN without affine" before the last conv
    with pytest.raises(ValueError, match="expects"):
        gen(torch.zeros(1, 3, 8, 8))


def test_generator_output_is_tanh_times_eps():
    gen = Generator(0.1, channels=4).eval()
    inputs = torch.randn(2, 6, 5, 5)
    pre = gen.head(gen.head_bn(gen.block(gen.stem(inputs))))
    torch.testing.assert_close(gen(inputs), torch.tanh(pre) * 0.1)


# --- the attack formula -----------------------------------------------------------------------


def test_attack_matches_the_formula_by_hand():
    """Fixed delta0 and a linear model: x_adv = clamp(x + clip(delta0 + alpha*sign(grad), -eps, eps), 0, 1)."""
    attack = make_attack(eps=0.1)  # alpha = eps: step_ratio 1
    w = torch.tensor([1.0, -2.0, 3.0, -0.5]).view(1, 1, 2, 2)
    model = TwoClassLinear(w)
    x = torch.tensor([0.5, 0.5, 0.97, 0.02]).view(1, 1, 2, 2)
    delta0 = torch.tensor([0.05, 0.05, -0.05, 0.08]).view(1, 1, 2, 2)
    # label 0: the CE gradient is p_1 * w, its sign is sign(w) = [+, -, +, -]
    # delta0 + alpha*sign = [0.15, -0.05, 0.05, -0.02] -> clip to the ball -> [0.1, -0.05, 0.05, -0.02]
    # x + delta = [0.6, 0.45, 1.02, 0.0] -> clamp to [0, 1] -> [0.6, 0.45, 1.0, 0.0]
    out = attack.finish(model, x, torch.tensor([0]), delta0)
    torch.testing.assert_close(out, torch.tensor([0.6, 0.45, 1.0, 0.0]).view(1, 1, 2, 2))
    # label 1 flips the gradient sign: delta0 - 0.1*sign(w) = [-0.05, 0.15, -0.15, 0.18] -> [-0.05, 0.1, -0.1, 0.1]
    out = attack.finish(model, x, torch.tensor([1]), delta0)
    torch.testing.assert_close(out, torch.tensor([0.45, 0.6, 0.87, 0.12]).view(1, 1, 2, 2))


def test_alpha_larger_than_eps_is_clipped_to_eps():
    model = TwoClassLinear(torch.tensor([1.0, -1.0]).view(1, 1, 1, 2))
    x = torch.full((1, 1, 1, 2), 0.5)
    for attack in (make_attack(eps=0.1, step_ratio=3.0), make_attack(eps=0.1, step=0.3)):
        delta1 = attack.fgsm_step(model, x, torch.tensor([0]))
        torch.testing.assert_close(delta1, torch.tensor([0.1, -0.1]).view(1, 1, 1, 2))


@pytest.mark.parametrize(
    ("eps", "step_ratio", "step", "alpha"),
    [(0.1, 1.0, None, 0.1), (0.1, 0.5, None, 0.05), (4 / 255, 1.0, None, 4 / 255), (0.1, 1.0, 0.02, 0.02)],
)
def test_the_fgsm_step_is_step_ratio_times_the_runs_eps_or_the_runs_step(eps, step_ratio, step, alpha):
    attack = make_attack(eps=eps, step=step, step_ratio=step_ratio)
    model = TwoClassLinear(torch.tensor([1.0, -1.0]).view(1, 1, 1, 2))
    delta1 = attack.fgsm_step(model, torch.full((1, 1, 1, 2), 0.5), torch.tensor([0]))
    torch.testing.assert_close(delta1, torch.tensor([alpha, -alpha]).view(1, 1, 1, 2))


def test_the_generator_works_in_the_runs_radius():
    attack = make_attack(eps=4 / 255, channels=4)
    assert attack.threat.eps == attack.generator.eps == pytest.approx(4 / 255)
    x, y = images(8, size=8)
    x_adv = attack(small_cnn().eval(), x, y)
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6


def test_generator_sees_x_and_the_sign_of_the_clean_gradient(monkeypatch):
    attack = make_attack(eps=0.1)
    attack.build("cpu", image_channels=1)
    w = torch.tensor([1.0, -2.0, 0.0, -0.5]).view(1, 1, 2, 2)
    model = TwoClassLinear(w)
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    y = torch.tensor([0, 1])
    seen = []
    forward = attack.generator.forward
    monkeypatch.setattr(attack.generator, "forward", lambda inputs: seen.append(inputs.clone()) or forward(inputs))
    attack(model, x, y)
    inputs = seen[-1]
    torch.testing.assert_close(inputs[:, :1], x)
    # sign of p_1 * w (label 0) and of -p_0 * w (label 1); a zero weight gives a zero gradient
    expected = torch.stack([w.sign()[0], -w.sign()[0]])
    torch.testing.assert_close(inputs[:, 1:], expected)
    torch.testing.assert_close(input_grad_sign(model, x, y), expected)


def test_attack_output_respects_eps_and_the_box_and_is_detached():
    attack = make_attack(channels=8)
    model = small_cnn().eval()
    x, y = images(32, size=8)
    x[:4] = 0.0  # corners of the box
    x[4:8] = 1.0
    for _ in range(3):  # an update happens on the first call
        x_adv = attack(model, x, y)
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert (x_adv - x).abs().max() <= EPS + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert (x_adv - x).abs().max() > 0.5 * EPS  # it does perturb


def test_attack_under_bf16_autocast():
    attack = make_attack(channels=8)
    model = small_cnn().eval()
    x, y = images(8, size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(model, x, y)
    assert x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0


# --- the generator's updates ---------------------------------------------------------------


def test_generator_is_updated_once_every_k_batches():
    attack = make_attack(channels=4, update_every=3)
    model = small_cnn().eval()
    x, y = images(8, size=8)
    changed = []
    for _ in range(7):
        before = [p.detach().clone() for p in attack.generator.parameters()]
        attack(model, x, y)
        changed.append(any(not torch.equal(b, p) for b, p in zip(before, attack.generator.parameters(), strict=True)))
    assert changed == [True, False, False, True, False, False, True]
    assert attack.step == 7


@pytest.mark.parametrize("train_mode", [False, True])
def test_generator_update_leaves_the_model_untouched(train_mode):
    attack = make_attack(channels=4, update_every=1)
    model = small_cnn().train(train_mode)
    with torch.no_grad():  # non-trivial running statistics to compare against
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    x, y = images(8, size=8)
    g_in = torch.cat([x, input_grad_sign(model, x, y)], 1)  # (in train mode this moves the statistics)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attack.update_generator(model, x, y, g_in)
    assert model.training is train_mode  # the engine's attack mode is restored
    assert attack.generator.training is False  # G proposes delta0 in eval mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k  # weights and BatchNorm statistics unchanged
    assert all(p.grad is None for p in model.parameters())  # nothing leaks into the model's gradients
    assert attack.last_update_loss is not None and torch.isfinite(attack.last_update_loss)


def test_generator_update_uses_the_model_in_train_mode_and_g_in_train_mode(monkeypatch):
    """The loss that G ascends is computed as the engine computes the model's loss: model in train mode."""
    attack = make_attack(channels=4, update_every=1)
    model = small_cnn().eval()
    modes = []

    class Spy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            modes.append(self.inner.training)
            return self.inner(x)

    spy = Spy(model).eval()
    gen_modes = []
    forward = attack.generator.forward
    monkeypatch.setattr(
        attack.generator, "forward", lambda inputs: gen_modes.append(attack.generator.training) or forward(inputs)
    )
    x, y = images(8, size=8)
    attack(spy, x, y)
    # clean gradient (eval), FGSM step of the update (eval), G's loss (train), FGSM step of the attack (eval)
    assert modes == [False, False, True, False]
    assert gen_modes == [True, False]  # G's BN in train mode for its update, eval mode to propose delta0
    assert spy.training is False


def test_generator_maximises_the_loss():
    """A few updates on a fixed model make G's initialisation beat random ones of the same size.

    The model has no BatchNorm, so the loss G ascends (train mode) and the one measured here
    (eval mode) are the same function; the comparison is on a held-out batch.
    """
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4, 10),
    ).eval()
    with torch.no_grad():
        model[-1].weight.mul_(30)  # confident logits: a loss that reacts to the perturbation
    x_train, y_train = images(64, size=8, seed=5)
    x_test, y_test = images(64, size=8, seed=6)
    attack = make_attack(channels=16, update_every=1, lr=1e-2, smoothing=0.0)

    def objective(delta0: torch.Tensor) -> float:
        x_adv = attack.finish(model, x_test, y_test, delta0)
        with torch.no_grad():
            return F.cross_entropy(model(x_adv), y_test).item()

    def g_delta0() -> torch.Tensor:
        attack.generator.eval()
        with torch.no_grad():
            return attack.generator(torch.cat([x_test, input_grad_sign(model, x_test, y_test)], 1))

    before = objective(g_delta0())
    losses = []
    for _ in range(15):
        attack(model, x_train, y_train)
        losses.append(attack.last_update_loss.item())
    delta0 = g_delta0()
    trained = objective(delta0)
    gen = torch.Generator().manual_seed(7)
    uniform = objective((torch.rand(delta0.shape, generator=gen) * 2 - 1) * EPS)  # FGSM-RS style start
    random_sign = torch.randint(0, 2, delta0.shape, generator=gen).float() * 2 - 1
    same_size = objective(delta0.abs() * random_sign)  # G's own magnitudes with random signs
    flipped = objective(-delta0)
    # measured (seeded): before 3.50, trained 3.55, uniform 3.39, same size 3.37, flipped 3.19
    assert losses[-1] > losses[0] + 0.05  # the objective G ascends rises on its training batch
    assert trained > before + 0.02
    assert trained > uniform + 0.1
    assert trained > same_size + 0.1
    assert trained > flipped + 0.2


# --- label smoothing (their LabelSmoothLoss, --factor 0.9) -------------------------------------

#: probabilities of 10 classes: 0.55 on class 0, 0.05 on each of the other nine
PROBS = [0.55] + [0.05] * 9


def test_the_smoothed_targets_are_0_9_and_0_1_over_9_by_hand():
    logits = torch.tensor([PROBS, PROBS[1:] + PROBS[:1]]).log()  # row 1: 0.55 on class 9
    y = torch.tensor([0, 1])
    # -0.9 log p_y - sum_{k != y} (0.1 / 9) log p_k
    row0 = -0.9 * math.log(0.55) - 9 * (0.1 / 9) * math.log(0.05)  # 0.8376
    row1 = -0.9 * math.log(0.05) - (0.1 / 9) * (math.log(0.55) + 8 * math.log(0.05))  # 2.9691
    expected = torch.tensor([row0, row1])
    torch.testing.assert_close(smoothed_cross_entropy(logits, y, 0.1), expected)
    attack = make_attack(channels=4)  # the preset's smoothing, 0.1
    torch.testing.assert_close(attack.generator_objective(logits, y), expected.mean())
    # not torch's label_smoothing=0.1 (0.91 on the true class, 0.01 on each other one), nor the old 0.5
    assert not torch.allclose(F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none"), expected)
    assert not torch.allclose(make_attack(channels=4, smoothing=0.5).generator_objective(logits, y), expected.mean())


def test_the_preset_smooths_the_models_loss_and_the_generators_objective_alike(registry):
    cfg = compose_config(registry, method="fgsm-sdi")
    loss = registry.create_part("loss", cfg.parts["loss"])
    attack = registry.create_part("attack", cfg.parts["attack"])
    logits = torch.tensor([PROBS, PROBS[::-1]]).log()
    y = torch.tensor([0, 3])
    per_sample = loss(Batch(nn.Identity(), logits, y, logits))  # the identity model: the 'images' are logits
    row0 = -0.9 * math.log(0.55) - 0.1 * math.log(0.05)
    row1 = -0.9 * math.log(0.05) - (0.1 / 9) * (math.log(0.55) + 8 * math.log(0.05))
    torch.testing.assert_close(per_sample, torch.tensor([row0, row1]))
    torch.testing.assert_close(attack.generator_objective(logits, y), per_sample.mean())  # G ascends the same loss


# --- state -----------------------------------------------------------------------------------


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model = small_cnn().eval()
    x, y = images(8, size=8)
    a = make_attack(channels=4, update_every=2)
    for _ in range(5):
        a(model, x, y)
    save_state(tmp_path / "state.safetensors", {"components": {"attack": a.state_dict()}})
    state = load_state(tmp_path / "state.safetensors")["components"]["attack"]

    b = make_attack(channels=4, update_every=2)
    b.setup(RunContext(device=torch.device("cpu"), num_classes=10, seed=123))  # other initial weights
    assert not torch.equal(a.generator.stem[0].weight, b.generator.stem[0].weight)
    b.load_state_dict(state)
    assert b.step == a.step == 5
    for (ka, va), (kb, vb) in zip(a.generator.state_dict().items(), b.generator.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka  # weights, BN statistics, num_batches_tracked
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for key in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][key]), torch.as_tensor(sb["state"][i][key])), (i, key)
    # the restored attack continues exactly as the original: same x_adv, same next update
    for _ in range(2):
        assert torch.equal(a(model, x, y), b(model, x, y))
    for pa, pb in zip(a.generator.parameters(), b.generator.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_state_dict_is_a_snapshot_and_empty_state_is_ignored():
    a = make_attack(channels=4)
    state = a.state_dict()
    with torch.no_grad():
        a.generator.head.bias.add_(1.0)
    assert not torch.equal(state["generator"]["head.bias"], a.generator.head.bias)
    a.load_state_dict({})  # a run without attack state (e.g. resumed from an older format)
    assert FGSMSDI().state_dict() == {}  # not set up yet: nothing to save


def test_generator_initialisation_depends_on_the_seed_only_and_keeps_the_global_rng():
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    a = make_attack(channels=4)
    assert torch.equal(torch.rand(3), expected)  # building G drew nothing from the global stream
    b = make_attack(channels=4)
    for pa, pb in zip(a.generator.parameters(), b.generator.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --- options, registry, preset ----------------------------------------------------------------


def test_defaults_follow_the_spec():
    cfg = FGSMSDIConfig()
    assert (cfg.step_ratio, cfg.update_every, cfg.lr, cfg.weight_decay, cfg.smoothing, cfg.channels) == (
        1.0,
        20,
        1e-3,
        5e-4,
        0.1,
        64,
    )
    assert not {"eps", "alpha", "norm", "label_smoothing"} & {f.name for f in dataclasses.fields(FGSMSDIConfig)}
    for f in dataclasses.fields(FGSMSDIConfig):
        assert f.metadata.get("help"), f.name
    assert FGSMSDI.norms == ("linf",)  # tanh(.) * eps and a sign step: an L-inf construction
    attack = FGSMSDI()
    assert attack.threat == ThreatModel()  # outside a run: 8/255 L-inf


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"step_ratio": "0"}, "'step_ratio' must be > 0"),
        ({"eps": "8/255"}, "no option 'eps'"),
        ({"alpha": "8/255"}, "no option 'alpha'"),
        ({"update_every": "0"}, "'update_every' must be >= 1"),
        ({"lr": "0"}, "'lr' must be > 0"),
        ({"weight_decay": "-1e-4"}, "'weight_decay' must be >= 0"),
        ({"smoothing": "1"}, "'smoothing' must be >= 0, < 1"),
        ({"smoothing": "-0.1"}, "'smoothing' must be >= 0, < 1"),
        ({"label_smoothing": "0.1"}, "no option 'label_smoothing'"),
        ({"channels": "0"}, "'channels' must be >= 1"),
        ({"steps": "3"}, "no option 'steps'"),
    ],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build_config(FGSMSDIConfig, options, "attack 'fgsm-sdi'")


def test_options_parse_from_strings():
    cfg = build_config(FGSMSDIConfig, {"step_ratio": "1/2", "smoothing": "0.2", "update_every": "5"}, "attack")
    assert (cfg.step_ratio, cfg.smoothing, cfg.update_every) == (0.5, 0.2, 5)


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def test_registry_creates_the_attack(registry):
    entry = registry.get("attack", "fgsm-sdi")
    assert issubclass(entry.cls, Attack) and entry.plugin == "fgsm-sdi"
    assert entry.summary.startswith("FGSM-SDI")
    attack = registry.create("attack", "fgsm-sdi", update_every="7")
    assert isinstance(attack, FGSMSDI) and attack.config.update_every == 7


def test_resolved_preset_is_pgd_at_with_the_sdi_attack_and_schedule(registry):
    method, pgd_at = registry.method("fgsm-sdi"), registry.method("pgd-at")
    assert {kind: name for kind, (name, _) in method.parts.items()} == {
        "attack": "fgsm-sdi",
        "loss": "ce",
        "weighter": "uniform",
    }
    sdi_options = method.parts["attack"][1]
    assert sdi_options["step_ratio"] == 1.0  # alpha = eps
    assert (sdi_options["update_every"], sdi_options["lr"], sdi_options["weight_decay"]) == (20, 1e-3, 5e-4)
    assert sdi_options["smoothing"] == method.parts["loss"][1]["smoothing"] == 0.1  # their --factor 0.9
    # PGD-AT's optimiser, FGSM-SDI's epochs and decays; the adversary made in train mode as their code
    assert method.settings == {
        **pgd_at.settings,
        "epochs": 110,
        "milestones": (100 / 110, 105 / 110),
        "attack_bn": "train",
    }
    assert method.reference_backbone == "resnet18"
    assert method.reproduce_command() == "energyat train --method fgsm-sdi --backbone resnet18 --dataset cifar10"
    assert (method.settings["optimizer"], method.settings["lr"], method.settings["momentum"]) == ("sgd", 0.1, 0.9)
    assert (method.settings["weight_decay"], method.settings["batch_size"]) == (5e-4, 128)
    assert (method.settings["schedule"], method.settings["gamma"]) == ("multistep", 0.1)
    assert method.help and method.reference


def test_preset_settings(registry):
    cfg = compose_config(registry, method="fgsm-sdi")
    assert (cfg.spec("attack"), cfg.spec("loss"), cfg.spec("weighter")) == ("fgsm-sdi", "ce", "uniform")
    assert cfg.parts["loss"].options["smoothing"] == 0.1
    attack = cfg.parts["attack"].config
    assert attack.smoothing == cfg.parts["loss"].config.smoothing
    assert attack.step_ratio == 1.0 and cfg.threat == ThreatModel(eps=8 / 255, norm="linf")
    assert cfg.attack_bn == "train"
    assert (attack.update_every, attack.lr, attack.weight_decay) == (20, 1e-3, 5e-4)
    assert (cfg.epochs, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (
        110,
        "sgd",
        0.1,
        0.9,
        5e-4,
        128,
    )
    assert cfg.schedule == "multistep" and cfg.gamma == 0.1
    assert cfg.milestones == pytest.approx((100 / 110, 105 / 110))
    # overriding the preset keeps the rest
    short = compose_config(registry, method="fgsm-sdi", flags={"epochs": 30})
    assert short.epochs == 30 and short.milestones == cfg.milestones


def test_preset_schedule_decays_at_100_and_105_of_110_epochs(registry):
    steps_per_epoch = 391
    total = 110 * steps_per_epoch
    milestones = registry.method("fgsm-sdi").settings["milestones"]

    def lr(epoch: float) -> float:
        return lr_at(int(epoch * steps_per_epoch), total, schedule="multistep", lr=0.1, milestones=milestones)

    assert lr(99.99) == pytest.approx(0.1)
    assert lr(100.01) == pytest.approx(0.01)
    assert lr(104.99) == pytest.approx(0.01)
    assert lr(105.01) == pytest.approx(0.001)


# --- the run's threat model and BatchNorm mode ---------------------------------------------------


def test_norm_l2_with_fgsm_sdi_is_a_one_line_error_naming_both(capsys, tmp_path):
    out = ("--out", tmp_path / "run")
    code = run_cli("train", *TINY_ARGS, "--attack", "fgsm-sdi", "--norm", "l2", *out)
    assert_one_line_error(code, capsys.readouterr().err, "fgsm-sdi", "l2")
    # the preset (TINY_ARGS' --attack none left out: the preset's attack is the one refused)
    small = ("--backbone", "small_cnn", "--dataset", "synthetic", "--device", "cpu", "--quiet")
    code = run_cli("train", "--method", "fgsm-sdi", "--norm", "l2", *small, *out)
    assert_one_line_error(code, capsys.readouterr().err, "fgsm-sdi", "l2")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_attack_of_a_run_takes_the_runs_radius(registry, tmp_path):
    cfg = compose_config(registry, method="fgsm-sdi", flags={**TINY_FLAGS, "eps": 4 / 255}, sets=[*TINY_SETS])
    attack = make_trainer(cfg, tmp_path / "run", registry).components["attack"]
    assert attack.threat == ThreatModel(eps=4 / 255, norm="linf")
    assert attack.generator.eps == pytest.approx(4 / 255)


#: a trainer small enough for a few real steps on CPU
TINY_FLAGS = {"backbone": "small_cnn", "dataset": "synthetic", "device": "cpu", "batch_size": 16, "eval_n": 16}
TINY_SETS = ("dataset.n_train=32", "dataset.n_test=16", "attack.channels=4")


@pytest.mark.parametrize("attack_bn", [None, "eval"])
def test_the_preset_makes_the_adversary_and_updates_g_with_the_model_in_train_mode(registry, tmp_path, attack_bn):
    # real trainer steps of the preset: the first batch updates G, the second only proposes
    cfg = compose_config(
        registry,
        method="fgsm-sdi",
        flags={**TINY_FLAGS, "attack_bn": attack_bn},
        sets=[*TINY_SETS, "attack.update_every=2"],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    modes = record_modes(trainer)[True]  # the passes the attack (and G's update) make
    train_steps(trainer)
    # batch 1: clean gradient, FGSM step of the update, G's loss (train mode always), FGSM step of the attack;
    # batch 2: clean gradient, FGSM step of the attack
    if attack_bn is None:  # the preset: train mode throughout, as FGSM_SDI.py (model.train() for the epoch)
        assert modes == [True] * 6
    else:  # --attack-bn eval overrides it: only the loss G ascends is computed in train mode
        assert modes == [False, False, True, False, False, False]
    assert trainer.model.training
