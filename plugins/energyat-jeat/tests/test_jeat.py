"""Tests of the energyat-jeat plugin: the loss by hand, the replay buffer, the guard, the preset, resume, e2e."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from energyat_core.api import (
    Batch,
    CheckpointError,
    ConfigError,
    ImageData,
    Loss,
    NonFiniteError,
    RunContext,
    build_config,
    marginal_energy,
)
from energyat_core.testing import (
    STATE_FILE,
    compose_config,
    fresh_registry,
    load_state,
    quick_train,
    run_cli,
    save_state,
)
from energyat_jeat.loss import JEAT, JEATConfig, jeat_per_sample

SHAPE = (3, 4, 4)


def tiny_data(num_classes: int = 3, n: int = 60) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % num_classes
    return ImageData(x, y, x[:6], y[:6], num_classes, [f"c{k}" for k in range(num_classes)],
                     (0.5,) * 3, (0.25,) * 3, "tiny")  # fmt: skip


@functools.cache
def registry():
    return fresh_registry()


def make_loss(data: ImageData | None = None, **options) -> JEAT:
    data = data or tiny_data()
    loss = JEAT(build_config(JEATConfig, options, "loss 'jeat'"))
    torch.manual_seed(0)
    loss.setup(RunContext(device=torch.device("cpu"), num_classes=data.num_classes, data=data, registry=registry()))
    return loss


def linear_model(num_classes: int = 3, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, num_classes))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def bn_model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, num_classes))  # fmt: skip


def lse(row: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in row))


# --- config ----------------------------------------------------------------------------------


def test_defaults_are_methods_md_and_jem():
    cfg = JEATConfig()
    assert cfg.lam == 1.0 and cfg.buffer_size == 10000 and cfg.reinit_prob == 0.05
    assert (cfg.sgld_steps, cfg.sgld_eta, cfg.sgld_sigma, cfg.sgld_momentum) == (20, 1.0, 0.01, 0.0)
    assert cfg.init == "noise" and not cfg.conditional and cfg.energy_clip is None and cfg.energy_bn == "joint"
    assert cfg.sampler_options() == {"steps": 20, "eta": 1.0, "sigma": 0.01, "momentum": 0.0, "init": "noise",
                                     "conditional": False}  # fmt: skip
    for f in dataclasses.fields(JEATConfig):
        assert f.metadata.get("help"), f.name
    assert issubclass(JEAT, Loss) and JEAT.__doc__.strip().splitlines()[0]
    for bad in ({"buffer_size": "0"}, {"reinit_prob": "1.5"}, {"energy_clip": "0"}, {"energy_limit": "-1"}):
        with pytest.raises(ConfigError):
            build_config(JEATConfig, bad, "loss 'jeat'")


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [("sgld_steps", "-1", "'steps' must be >= 0"), ("sgld_momentum", "1", "'momentum' must be >= 0, < 1"),
     ("sgld_sigma", "-0.1", "'sigma' must be >= 0"), ("init", "zeros", "'init' expects one of")],
)  # fmt: skip
def test_sampler_options_are_checked_against_the_sampler_declaration(option, value, match):
    with pytest.raises(ConfigError, match=f"loss 'jeat': {option}: the sgld sampler option {match}"):
        build_config(JEATConfig, {option: value}, "loss 'jeat'")


# --- the formula -----------------------------------------------------------------------------


def test_per_sample_loss_by_hand():
    logits_adv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    logits_sgld = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 4.0]])
    y = torch.tensor([0, 1])
    e_adv, e_sgld = marginal_energy(logits_adv), marginal_energy(logits_sgld)
    got = jeat_per_sample(logits_adv, y, e_adv, e_sgld, lam=1.0)
    ce = [lse([2, 0, 0]) - 2, lse([0, 1, 3]) - 1]
    energy = [-lse([2, 0, 0]) + lse([1, 1, 1]), -lse([0, 1, 3]) + lse([-1, 0, 4])]
    expected = torch.tensor([ce[0] + energy[0], ce[1] + energy[1]])
    assert torch.allclose(got, expected, atol=1e-6)
    # lam scales the energy term only
    got = jeat_per_sample(logits_adv, y, e_adv, e_sgld, lam=0.5)
    assert torch.allclose(got, torch.tensor(ce) + 0.5 * torch.tensor(energy), atol=1e-6)
    # the engine's mean is methods.md's batch formula: mean CE + lam * (mean E(x_adv) - mean E(x_sgld))
    batch = jeat_per_sample(logits_adv, y, e_adv, e_sgld, lam=1.0).mean()
    assert batch.item() == pytest.approx(sum(ce) / 2 + (e_adv.mean() - e_sgld.mean()).item(), abs=1e-6)
    # clipping: energy differences are clamped to [-c, c]
    got = jeat_per_sample(logits_adv, y, e_adv, e_sgld, lam=1.0, energy_clip=0.1)
    clipped = torch.tensor(energy).clamp(-0.1, 0.1)
    assert torch.allclose(got, torch.tensor(ce) + clipped, atol=1e-6)


def test_loss_through_a_batch_with_a_known_sgld_sample():
    # buffer of one image, no SGLD step, no restart: x_sgld_i = buffer[0] for every i
    loss = make_loss(buffer_size=1, sgld_steps=0, reinit_prob=0.0, lam=2.0)
    model = linear_model()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, *SHAPE, generator=g)
    x_adv = (x + 0.01).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 0])
    buffer0 = loss.buffer[0].clone()
    got = loss(Batch(model, x, y, x_adv))
    with torch.no_grad():
        la, ls = model(x_adv), model(buffer0[None])
        ce = torch.nn.functional.cross_entropy(la, y, reduction="none")
        expected = ce + 2.0 * (-torch.logsumexp(la, 1) + torch.logsumexp(ls, 1))
    assert torch.allclose(got, expected, atol=1e-5)
    got.mean().backward()
    assert model[1].weight.grad is not None


# --- replay buffer ---------------------------------------------------------------------------


def test_buffer_is_initialised_from_the_sampler_and_updated_in_place():
    loss = make_loss(buffer_size=50, sgld_steps=3, reinit_prob=0.0)
    assert loss.buffer.shape == (50, *SHAPE) and loss.buffer_y.shape == (50,)
    assert loss.buffer.min() >= 0 and loss.buffer.max() <= 1 and abs(loss.buffer.mean().item() - 0.5) < 0.05
    before = loss.buffer.clone()
    model = bn_model().train()
    torch.manual_seed(3)
    x = loss.draw(model, 8)
    assert model.training and all(p.grad is None for p in model.parameters())
    changed = (loss.buffer != before).flatten(1).any(1)
    assert 1 <= int(changed.sum()) <= 8
    rows = loss.buffer[changed]
    assert all(any(torch.equal(r, xi) for xi in x) for r in rows)  # written back: the drawn samples


def test_reinit_probability_one_restarts_every_chain():
    loss = make_loss(buffer_size=20, sgld_steps=0, reinit_prob=1.0)
    loss.buffer.fill_(0.25)
    x = loss.draw(linear_model(), 10)
    assert not (x == 0.25).all(1).all(1).all(1).any()  # fresh uniform noise, not buffer images


def test_energy_pass_leaves_batchnorm_running_statistics_alone_in_joint_mode():
    model = bn_model().train()
    x = torch.rand(6, *SHAPE)
    for mode, should_change in (("joint", False), ("eval", False), ("train", True)):
        loss = make_loss(buffer_size=10, sgld_steps=0, energy_bn=mode)
        stats = (model[1].running_mean.clone(), model[1].running_var.clone(), model[1].num_batches_tracked.clone())
        logits = loss.energy_logits(model, x, torch.rand(6, *SHAPE))
        logits.sum().backward()
        now = (model[1].running_mean, model[1].running_var, model[1].num_batches_tracked)
        assert (not all(torch.equal(a, b) for a, b in zip(stats, now, strict=True))) == should_change, mode
        assert model.training and model[1].momentum == 0.1


def test_joint_mode_is_one_train_mode_pass_over_the_concatenation():
    model = bn_model().train()
    loss = make_loss(buffer_size=10, sgld_steps=0)
    a, b = torch.rand(5, *SHAPE), torch.rand(5, *SHAPE)
    got = loss.energy_logits(model, a, b)
    with torch.no_grad():
        expected = model(torch.cat([a, b]))  # same batch statistics
    assert torch.allclose(got, expected, atol=1e-6)


# --- divergence guard ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e6, float("nan")])
def test_diverged_energies_stop_the_run_with_a_clear_message(scale):
    loss = make_loss(buffer_size=4, sgld_steps=0)
    model = linear_model(scale=scale)
    x = torch.rand(4, *SHAPE)
    with pytest.raises(NonFiniteError) as err:
        loss(Batch(model, x, torch.tensor([0, 1, 2, 0]), x))
    line = err.value.line()
    assert "JEAT's energies became" in line and "--resume" in line and "energy_clip" in line
    assert ("non-finite" in line) == math.isnan(scale)


# --- checkpoint state ------------------------------------------------------------------------


def test_state_dict_round_trip_and_shape_check(tmp_path):
    loss = make_loss(buffer_size=12, sgld_steps=0)
    state = loss.state_dict()
    assert set(state) == {"buffer", "labels"} and state["buffer"].shape == (12, *SHAPE)
    save_state(tmp_path / STATE_FILE, {"components": {"loss": state}})
    restored = load_state(tmp_path / STATE_FILE)["components"]["loss"]
    other = make_loss(buffer_size=12, sgld_steps=0)
    other.buffer.fill_(0.5)
    other.buffer_y.fill_(0)
    other.load_state_dict(restored)
    assert torch.equal(other.buffer, loss.buffer) and torch.equal(other.buffer_y, loss.buffer_y)
    other.buffer[0] = 0  # a copy, not a view of the checkpoint
    assert not torch.equal(other.buffer, loss.buffer)
    with pytest.raises(CheckpointError, match="replay buffer"):
        make_loss(buffer_size=5, sgld_steps=0).load_state_dict(restored)


# --- preset ----------------------------------------------------------------------------------


def test_preset_is_pgd_at_with_the_jeat_loss():
    reg = registry()
    method, base = reg.method("jeat"), reg.method("pgd-at")
    assert reg.methods["jeat"].based_on == "pgd-at"
    assert method.parts["loss"] == ("jeat", {})
    assert {k: v for k, v in method.parts.items() if k != "loss"} == {
        k: v for k, v in base.parts.items() if k != "loss"
    }  # attack, weighter (and anything else) as pgd-at's
    assert method.settings == base.settings  # pgd-at's schedule
    cfg = compose_config(reg, method="jeat")
    assert (cfg.spec("attack"), cfg.spec("loss"), cfg.spec("weighter")) == ("pgd", "jeat", "uniform")
    attack = cfg.parts["attack"].options
    assert (
        attack["steps"] == 10 and attack["eps"] == pytest.approx(8 / 255) and attack["alpha"] == pytest.approx(2 / 255)
    )
    assert attack["objective"] == "ce" and attack["random_start"] == "uniform"
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.schedule) == (0.1, 100, 128, "multistep")
    assert isinstance(reg.create_part("loss", cfg.parts["loss"]), JEAT)
    assert cfg.parts["loss"].config == JEATConfig()  # the loss's defaults: JEM's
    plugin = next(p for p in reg.plugins if p.name == "jeat")
    assert not plugin.errors and {"loss:jeat", "method:jeat"} <= set(plugin.registered)


# --- end to end ------------------------------------------------------------------------------

RESUME_ARGS = (
    "--method", "jeat", "--epochs", "2",
    "--set", "dataset.n_train=256", "--set", "dataset.n_test=50", "--eval-n", "50", "--eval-steps", "1",
    "--set", "attack.steps=1", "--set", "loss.sgld_steps=2", "--set", "loss.buffer_size=64",
    "--set", "loss.reinit_prob=0.2",
)  # fmt: skip


def test_buffer_survives_resume(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    quick_train(full, *RESUME_ARGS)
    quick_train(split, *RESUME_ARGS, "--stop-after", "1")
    after_one = load_state(split / STATE_FILE)["components"]["loss"]
    assert after_one["buffer"].shape == (64, *(3, 32, 32))
    assert run_cli("train", "--resume", split, "--quiet") == 0
    a, b = (load_state(run / STATE_FILE)["components"]["loss"] for run in (full, split))
    assert not torch.equal(after_one["buffer"], b["buffer"])  # the second epoch moved the chains
    assert torch.equal(a["buffer"], b["buffer"]) and torch.equal(a["labels"], b["labels"])


def test_jeat_trains_a_robust_classifier_that_generates_its_classes(tmp_path):
    # Quick setting: PGD-5 and 5 SGLD steps per batch on a 500-image buffer. With lambda = 1 the
    # energy term dominates the CE term in a 60-step run (clean ~26%, PGD ~10% on this setting),
    # so the test uses lambda = 0.1; the formula and the machinery are the preset's.
    std = quick_train(tmp_path / "std", "--attack", "none", "--loss", "ce")
    jeat = quick_train(
        tmp_path / "jeat", "--method", "jeat", "--set", "attack.steps=5", "--set", "loss.sgld_steps=5",
        "--set", "loss.buffer_size=500", "--set", "loss.lam=0.1",
    )  # fmt: skip
    print(f"std: clean {std[-1]['clean_acc']:.3f} PGD-10 {std[-1]['robust_acc']:.3f}; "
          f"jeat: clean {jeat[-1]['clean_acc']:.3f} PGD-10 {jeat[-1]['robust_acc']:.3f}")  # fmt: skip
    assert jeat[-1]["fwd_per_sample"] == pytest.approx(5 + 5 + 1 + 2)  # PGD + SGLD + CE + joint energy pass
    assert jeat[-1]["robust_acc"] > std[-1]["robust_acc"] + 0.10
    assert all(math.isfinite(r["energy_clean"]) for r in jeat)
    out = tmp_path / "samples"
    code = run_cli("generate", tmp_path / "jeat", "--n", "100", "--out", out, "--device", "cpu", "--quiet",
                   "--judge", tmp_path / "std")  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    print("generated: self", summary["accuracy"]["self"]["overall"], "judge", summary["accuracy"]["judge"]["overall"])
    assert summary["accuracy"]["self"]["overall"] > 0.5  # chance is 0.1
    assert summary["accuracy"]["judge"]["overall"] > 0.5  # an independently trained classifier agrees
    with np.load(out / "samples.npz") as f:
        assert f["images"].shape == (100, 32, 32, 3) and np.bincount(f["labels"]).tolist() == [10] * 10
