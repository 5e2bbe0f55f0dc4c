"""Tests of the sgld sampler: the update rule by hand, energy descent, initialisations and their cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from energyat_core.api import ConfigError, ImageData, RunContext, Sampler, build_config, joint_energy, marginal_energy
from energyat_core.testing import fresh_registry
from energyat_sgld.init_stats import GAUSSIAN_RIDGE, cache_path, fit_class_stats
from energyat_sgld.sampler import SGLD, SGLDConfig

SHAPE = (3, 8, 8)
D = 3 * 8 * 8


def linear_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, num_classes))


def smooth_model(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 8 * 8, num_classes)
    ).eval()


def structured_data(num_classes: int = 3, per_class: int = 400, seed: int = 0) -> ImageData:
    """Images = class mean + two strong random directions + small noise (uint8, 3x8x8)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(num_classes):
        mean = 0.3 + 0.4 * torch.rand(D, generator=g)
        dirs = torch.linalg.qr(torch.randn(D, 2, generator=g))[0].T  # 2 orthonormal directions
        coef = torch.randn(per_class, 2, generator=g) * torch.tensor([1.0, 0.6])
        img = mean + coef @ dirs + 0.004 * torch.randn(per_class, D, generator=g)
        xs.append((img.clamp(0, 1) * 255).round().to(torch.uint8).view(per_class, *SHAPE))
        ys.append(torch.full((per_class,), c, dtype=torch.int64))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return ImageData(
        train_x=x,
        train_y=y,
        test_x=x[:10],
        test_y=y[:10],
        num_classes=num_classes,
        classes=[f"c{k}" for k in range(num_classes)],
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        name="structured",
    ).validate()


def make_sampler(data: ImageData | None = None, run_dir=None, **options) -> SGLD:
    data = data or structured_data()
    sampler = SGLD(build_config(SGLDConfig, options, "sampler 'sgld'"))
    sampler.setup(RunContext(device=torch.device("cpu"), num_classes=data.num_classes, data=data, run_dir=run_dir))
    return sampler


# --- config ----------------------------------------------------------------------------------


def test_defaults_are_methods_md():
    cfg = SGLDConfig()
    assert (cfg.eta, cfg.steps, cfg.momentum, cfg.sigma) == (1.0, 20, 0.0, 0.001)
    assert cfg.init == "pca" and cfg.conditional and cfg.pca_variance == 0.95 and cfg.pca_scale == 0.005
    for f in dataclasses.fields(SGLDConfig):
        assert f.metadata.get("help"), f.name
    assert issubclass(SGLD, Sampler) and SGLD.__doc__.strip().splitlines()[0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": "-1"}, "steps"),
        ({"momentum": "1"}, "momentum"),
        ({"sigma": "-0.1"}, "sigma"),
        ({"eta": "-1"}, "eta"),
        ({"fit_n": "1"}, "fit_n"),
        ({"pca_variance": "0"}, "pca_variance"),
        ({"init": "zeros"}, "init"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ConfigError, match=match):
        build_config(SGLDConfig, options, "sampler 'sgld'")


# --- the update rule -------------------------------------------------------------------------


def test_two_conditional_steps_with_momentum_by_hand():
    # f(x) = W x + b: grad_x E(x, y) = -W_y is constant, so with v0 = 0
    #   v1 = (eta/2) W_y,            x1 = clamp(x0 + v1)
    #   v2 = m v1 + (eta/2) W_y,     x2 = clamp(x1 + v2)
    model = linear_model()
    sampler = make_sampler(init="noise", eta=0.5, steps=2, momentum=0.9, sigma=0.0)
    g = torch.Generator().manual_seed(3)
    x0 = 0.2 + 0.6 * torch.rand(6, *SHAPE, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = model[1].weight.detach()[y].view_as(x0)
    a = 0.25 * w
    x1 = (x0 + a).clamp(0, 1)
    x2 = (x1 + 0.9 * a + a).clamp(0, 1)
    assert torch.allclose(sampler.sample(model, x0, y), x2, atol=1e-6)


def test_unconditional_step_by_hand():
    # grad_x E(x) = -sum_k softmax(f(x))_k W_k
    model = linear_model()
    sampler = make_sampler(init="noise", eta=1.0, steps=1, sigma=0.0, conditional=False)
    x0 = torch.full((2, *SHAPE), 0.5)
    lin = model[1]
    with torch.no_grad():
        p = torch.softmax(lin(x0.flatten(1)), 1)
        expected = (x0.flatten(1) + 0.5 * p @ lin.weight).clamp(0, 1).view_as(x0)
    y = torch.tensor([0, 1])
    assert torch.allclose(sampler.sample(model, x0, y), expected, atol=1e-6)  # labels ignored: unconditional
    conditional = make_sampler(init="noise", eta=1.0, steps=1, sigma=0.0)
    assert not torch.allclose(conditional.sample(model, x0, y), expected, atol=1e-4)
    assert torch.allclose(conditional.sample(model, x0, None), expected, atol=1e-6)  # no labels: E(x)


@pytest.mark.parametrize("conditional", [True, False])
def test_energy_decreases_monotonically_without_noise(conditional):
    model = smooth_model()
    sampler = make_sampler(init="noise", eta=0.5, steps=15, sigma=0.0, momentum=0.0, conditional=conditional)
    torch.manual_seed(0)
    y = torch.arange(10) % 5
    x0 = sampler.init(y)
    energies = []
    final = sampler.sample(model, x0, y, callback=lambda k, x, e: energies.append(e))
    with torch.no_grad():
        logits = model(final)
        energies.append(joint_energy(logits, y) if conditional else marginal_energy(logits))
    e = torch.stack(energies)  # [K + 1, B]
    assert len(e) == 16
    assert (e[1:] <= e[:-1] + 1e-6).all(), "energy went up along the chain"
    assert (e[-1] < e[0] - 0.05).all(), "the chain barely moved"


def test_sampler_uses_eval_mode_restores_it_and_leaves_no_param_grads():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 64, 3))
    model.train()
    running = model[1].running_mean.clone()
    sampler = make_sampler(init="noise", steps=3)
    modes = []
    x = sampler.sample(model, sampler.init(torch.tensor([0, 1, 2])), torch.tensor([0, 1, 2]),
                       callback=lambda k, x, e: modes.append(model.training))  # fmt: skip
    assert modes == [False, False, False] and model.training
    assert torch.equal(running, model[1].running_mean)  # eval mode: running statistics untouched
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad and x.min() >= 0 and x.max() <= 1
    model.eval()
    sampler.sample(model, x, None)
    assert not model.training


# --- initialisations -------------------------------------------------------------------------


def test_noise_init_is_uniform_on_the_image_shape():
    sampler = make_sampler(init="noise")
    torch.manual_seed(0)
    x = sampler.init(torch.zeros(500, dtype=torch.int64))
    assert x.shape == (500, *SHAPE) and x.min() >= 0 and x.max() <= 1
    assert abs(x.mean().item() - 0.5) < 0.01 and abs(x.std().item() - (1 / 12) ** 0.5) < 0.01


def test_pca_keeps_95_percent_uses_data_matrix_singular_values_and_reproduces_the_mean():
    data = structured_data()
    stats = fit_class_stats(data.train_x, data.train_y, data.num_classes, "pca", fit_n=5000, variance=0.95)
    sampler = make_sampler(data, init="pca")
    torch.manual_seed(0)
    for c in range(data.num_classes):
        xs = data.train_x[data.train_y == c].flatten(1).double() / 255
        xc = xs - xs.mean(0)
        s = torch.linalg.svdvals(xc)  # singular values of the centred data matrix
        share = torch.cumsum(s**2, 0) / (s**2).sum()
        r = int((share < 0.95).sum()) + 1
        assert r == 2  # the two planted directions explain > 95%, one alone does not
        assert stats.singular[c].numel() == r
        assert torch.allclose(stats.singular[c].double(), s[:r], rtol=1e-4)
        # samples: mean ~ class mean, spread along PC_i ~ 0.005 * s_i
        x = sampler.init(torch.full((4000,), c)).flatten(1).double()
        assert x.min() >= 0 and x.max() <= 1
        assert (x.mean(0) - xs.mean(0)).abs().max() < 0.01
        proj = (x - xs.mean(0)) @ stats.bases[c].double().T
        assert torch.allclose(proj.std(0), 0.005 * s[:r], rtol=0.08)


def test_pca_samples_are_clamped_to_the_unit_box():
    data = structured_data()
    sampler = make_sampler(data, init="pca", pca_scale=0.2)  # far too wide on purpose
    x = sampler.init(torch.arange(300) % 3)
    assert x.min() == 0 and x.max() == 1


def test_gaussian_init_has_the_class_covariance_plus_ridge():
    data = structured_data(num_classes=2, per_class=300)
    sampler = make_sampler(data, init="gaussian")
    torch.manual_seed(0)
    xs = data.train_x[data.train_y == 1].flatten(1).double() / 255
    cov = torch.cov(xs.T) + GAUSSIAN_RIDGE * torch.eye(D, dtype=torch.float64)
    x = sampler.init(torch.ones(20000, dtype=torch.int64)).flatten(1).double()
    assert (x.mean(0) - xs.mean(0)).abs().max() < 0.01
    emp = torch.cov(x.T)
    # clamping barely matters here (means in [0.3, 0.7], spread ~0.06)
    assert (emp - cov).abs().max() < 0.1 * cov.diagonal().max()
    assert abs(emp.trace() / cov.trace() - 1) < 0.03


def test_fitted_statistics_are_cached_per_init_and_refitted_when_options_change(tmp_path):
    data = structured_data()
    first = make_sampler(data, run_dir=tmp_path, init="pca")
    assert first.fit_report == {"cached": False, "path": str(cache_path(tmp_path, "pca"))}
    assert cache_path(tmp_path, "pca").is_file() and not cache_path(tmp_path, "gaussian").exists()
    second = make_sampler(data, run_dir=tmp_path, init="pca")
    assert second.fit_report["cached"] is True
    for a, b in zip(first.stats.bases + first.stats.singular, second.stats.bases + second.stats.singular, strict=True):
        assert torch.equal(a, b)
    assert make_sampler(data, run_dir=tmp_path, init="pca", fit_n=100).fit_report["cached"] is False
    assert make_sampler(data, run_dir=tmp_path, init="pca", pca_variance=0.5).fit_report["cached"] is False
    other = structured_data(seed=1)  # different training set: stale cache is refitted
    assert make_sampler(other, run_dir=tmp_path, init="pca").fit_report["cached"] is False
    assert make_sampler(data, run_dir=tmp_path, init="gaussian").fit_report["cached"] is False
    assert cache_path(tmp_path, "gaussian").is_file()
    assert make_sampler(data, run_dir=tmp_path, init="pca", cache=False).fit_report["cached"] is False


def test_fit_uses_at_most_fit_n_images_and_handles_an_empty_class():
    data = structured_data()
    y = data.train_y.clone()
    y[y == 2] = 0  # class 2 has no images
    stats = fit_class_stats(data.train_x, y, 3, "pca", fit_n=50)
    assert stats.counts == [50, 50, 0]
    overall = data.train_x.flatten(1).double().mean(0) / 255
    assert torch.allclose(stats.means[2].double(), overall, atol=1e-6) and stats.bases[2].shape == (0, D)
    x = stats.sample(torch.tensor([2, 2]))
    assert torch.allclose(x[0], x[1])  # no components: the mean image itself


def test_setup_without_data_is_a_config_error():
    with pytest.raises(ConfigError, match="needs the run's training data"):
        SGLD().setup(RunContext(device=torch.device("cpu"), num_classes=10))


# --- registry --------------------------------------------------------------------------------


def test_registered_through_the_plugin():
    registry = fresh_registry()
    sampler = registry.create("sampler", "sgld", steps="7", init="noise")
    assert isinstance(sampler, SGLD) and sampler.config.steps == 7
    plugin = next(p for p in registry.plugins if p.name == "sgld")
    assert not plugin.errors and "sampler:sgld" in plugin.registered
