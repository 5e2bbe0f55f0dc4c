"""Tests of energyat_core.perturbation: projections, objectives and the PGD loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.divergence import kl_per_sample
from energyat_core.perturbation import default_step, objective_values, pgd, project, random_start_delta

EPS = 8 / 255
ALPHA = 2 / 255


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, num_classes),
    ).eval()


def batch(n: int = 16, num_classes: int = 10, low: float = 0.0, high: float = 1.0):
    g = torch.Generator().manual_seed(1)
    x = low + (high - low) * torch.rand(n, 3, 8, 8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


def linf(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().max(dim=1).values


def l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


# --- project / random starts ------------------------------------------------------------


def test_project_linf_clamps_each_coordinate():
    d = torch.tensor([[0.5, -0.5, 0.01]])
    assert torch.allclose(project(d, 0.1, "linf"), torch.tensor([[0.1, -0.1, 0.01]]))


def test_project_l2_rescales_outside_and_keeps_inside():
    torch.manual_seed(0)
    d = torch.randn(6, 3, 4, 4)
    d[:3] *= 10  # far outside
    d[3:] = d[3:] / l2(d[3:]).view(-1, 1, 1, 1) * 0.2  # inside a ball of 0.5
    p = project(d, 0.5, "l2")
    assert torch.allclose(l2(p[:3]), torch.full((3,), 0.5), atol=1e-6)
    assert torch.allclose(p[3:], d[3:])
    # direction is kept
    cos = F.cosine_similarity(p.flatten(1), d.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones(6), atol=1e-6)


def test_project_l2_zero_delta_stays_zero():
    assert torch.equal(project(torch.zeros(2, 3), 0.5, "l2"), torch.zeros(2, 3))


def test_project_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        project(torch.zeros(1, 2), 0.1, "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_are_inside_the_ball(norm):
    torch.manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    eps = EPS if norm == "linf" else 0.5
    measure = linf if norm == "linf" else l2
    u = random_start_delta(x, eps, norm, "uniform")
    assert (measure(u) <= eps + 1e-6).all()
    assert measure(u).max() > eps / 2  # not degenerate
    n = random_start_delta(x, eps, norm, "normal")
    assert n.abs().max() < 0.01 and n.abs().max() > 0
    assert torch.equal(random_start_delta(x, eps, norm, "none"), torch.zeros_like(x))


# --- objectives ---------------------------------------------------------------------------


def test_objective_ce_matches_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(objective_values(logits, y, "ce"), F.cross_entropy(logits, y, reduction="none"))


def test_objective_kl_by_hand_and_zero_at_reference():
    torch.manual_seed(0)
    ref, logits, y = torch.randn(5, 4), torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
    p, q = ref.softmax(1), logits.softmax(1)
    expected = (p * (p.log() - q.log())).sum(1)
    assert torch.allclose(objective_values(logits, y, "kl", ref), expected, atol=1e-6)
    assert torch.allclose(objective_values(ref, y, "kl", ref), torch.zeros(5), atol=1e-6)
    with pytest.raises(ValueError, match="ref_logits"):
        objective_values(logits, y, "kl")


def test_objective_kl_reference_is_detached():
    ref = torch.randn(3, 4, requires_grad=True)
    logits = torch.randn(3, 4, requires_grad=True)
    objective_values(logits, torch.zeros(3, dtype=torch.long), "kl", ref).sum().backward()
    assert ref.grad is None and logits.grad is not None


def test_objective_cw_margin_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    # sample 0: max other 2 - 3 = -1 (correct); sample 1: 5 - 1 = 4 (misclassified)
    assert torch.allclose(objective_values(logits, y, "cw"), torch.tensor([-1.0, 4.0]))


def test_objective_is_float32_for_bf16_logits():
    logits = torch.randn(4, 3).to(torch.bfloat16)
    y = torch.tensor([0, 1, 2, 0])
    for obj in ("ce", "cw", "kl"):
        assert objective_values(logits, y, obj, ref_logits=logits).dtype == torch.float32


# --- pgd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", ["uniform", "normal", "none"])
def test_pgd_linf_stays_in_ball_and_box(random_start):
    model = small_cnn()
    x, y = batch()
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=5, random_start=random_start)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (linf(x_adv - x) <= EPS + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad and x_adv.grad_fn is None


def test_pgd_l2_stays_in_ball_and_box():
    model = small_cnn()
    x, y = batch()
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=0.5, alpha=0.5, steps=5, norm="l2")
    assert (l2(x_adv - x) <= 0.5 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert l2(x_adv - x).max() > 0.4  # it does move


def test_pgd_box_near_edges():
    model = small_cnn()
    x, y = batch()
    x = (x > 0.5).float()  # every pixel on the box edge
    x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (linf(x_adv - x) <= EPS + 1e-6).all()


@pytest.mark.parametrize(
    ("objective", "norm", "random_start"),
    [
        ("ce", "linf", "uniform"),
        ("cw", "linf", "uniform"),
        ("kl", "linf", "normal"),
        ("ce", "l2", "uniform"),
        ("cw", "l2", "uniform"),
        ("kl", "l2", "normal"),
    ],
)
def test_pgd_beats_a_random_point_of_the_ball(objective, norm, random_start):
    model = small_cnn()
    x, y = batch(32)
    eps = EPS if norm == "linf" else 0.5
    torch.manual_seed(0)
    x_rand = (x + random_start_delta(x, eps, norm, "uniform")).clamp(0, 1)
    x_adv = pgd(
        model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, objective=objective, random_start=random_start
    )
    with torch.no_grad():
        ref = model(x)
        at_rand = objective_values(model(x_rand), y, objective, ref)
        at_adv = objective_values(model(x_adv), y, objective, ref)
    assert at_adv.mean() > at_rand.mean()
    assert (at_adv > at_rand).float().mean() > 0.5


def test_pgd_leaves_parameters_and_mode_alone():
    model = small_cnn().train()
    x, y = batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad
    model.eval()
    pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    assert not model.training
    # only BN running stats may change (train mode), never weights
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k


def test_pgd_input_with_a_graph_is_not_touched():
    model = small_cnn()
    x, y = batch()
    leaf = x.clone().requires_grad_(True)
    x_in = leaf * 1.0  # part of a graph
    x_adv = pgd(model, x_in, y, eps=EPS, alpha=ALPHA, steps=2)
    assert not x_adv.requires_grad and leaf.grad is None


def test_pgd_under_bf16_autocast():
    model = small_cnn()
    x, y = batch()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3, objective="kl", random_start="normal")
        x_adv2 = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3, restarts=2)
    for adv in (x_adv, x_adv2):
        assert adv.dtype == torch.float32 and not adv.requires_grad
        assert (linf(adv - x) <= EPS + 1e-6).all()
        assert adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())


def test_restarts_keep_misclassification_and_never_lose_objective():
    model = small_cnn()
    x, y = batch(64)
    kwargs = dict(eps=2 / 255, alpha=1 / 255, steps=2)
    torch.manual_seed(3)
    single = pgd(model, x, y, **kwargs)
    torch.manual_seed(3)  # the first restart repeats the single run
    multi = pgd(model, x, y, restarts=4, **kwargs)
    with torch.no_grad():
        ls, lm = model(single), model(multi)
    wrong_s, wrong_m = ls.argmax(1) != y, lm.argmax(1) != y
    assert (wrong_m | ~wrong_s).all()  # misclassified by the single run => still misclassified
    obj_s, obj_m = objective_values(ls, y, "ce"), objective_values(lm, y, "ce")
    assert (wrong_m | (obj_m >= obj_s - 1e-6)).all()
    assert (linf(multi - x) <= 2 / 255 + 1e-6).all()


def test_one_step_of_pgd_is_fgsm_on_a_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x, y = batch(8, num_classes=5, low=0.1, high=0.9)  # far from the box edges
    w, b = model[1].weight.detach(), model[1].bias.detach()
    p = (x.flatten(1) @ w.T + b).softmax(1)
    grad = (p - F.one_hot(y, 5).float()) @ w  # d CE / d x for logits W x + b
    expected = x + EPS * grad.sign().view_as(x)
    x_adv = pgd(model, x, y, eps=EPS, alpha=EPS, steps=1, random_start="none")
    assert torch.allclose(x_adv, expected, atol=1e-6)


def test_default_step_is_one_rule():
    assert default_step(8 / 255, 10) == pytest.approx(2 / 255)  # Madry et al.'s CIFAR-10 setting
    assert default_step(8 / 255, 20) == pytest.approx(2 / 255)
    assert default_step(0.5, 10) == pytest.approx(0.125)  # L2: eps/4
    assert default_step(8 / 255, 5) == pytest.approx(2.5 * (8 / 255) / 5)  # few steps: 2.5*eps/steps


def test_kl_objective_is_the_shared_kl():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(objective_values(b, torch.zeros(6, dtype=torch.long), "kl", ref_logits=a), kl_per_sample(a, b))
    p, q = a.softmax(1), b.softmax(1)
    assert torch.allclose(kl_per_sample(a, b), (p * (p.log() - q.log())).sum(1), atol=1e-6)


def test_l2_step_on_a_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x, y = batch(4, num_classes=2, low=0.3, high=0.7)
    w = model[1].weight.detach()
    # two classes: the CE gradient points along w_other - w_y
    direction = (w[1 - y] - w[y]) / (w[1 - y] - w[y]).norm(dim=1, keepdim=True)
    x_adv = pgd(model, x, y, eps=0.5, alpha=0.1, steps=1, norm="l2", random_start="none")
    assert torch.allclose(x_adv, x + 0.1 * direction.view_as(x), atol=1e-6)


def test_zero_gradient_l2_step_does_not_produce_nan():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    nn.init.zeros_(model[1].weight)
    x, y = batch(4, num_classes=3)
    x_adv = pgd(model, x, y, eps=0.5, alpha=0.1, steps=2, norm="l2", random_start="none")
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"eps": -0.1}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"objective": "mse"}, "objective"),
        ({"random_start": "gauss"}, "random start"),
    ],
)
def test_pgd_rejects_bad_arguments(kwargs, match):
    model = small_cnn()
    x, y = batch(2)
    args = dict(eps=EPS, alpha=ALPHA, steps=1) | kwargs
    with pytest.raises(ValueError, match=match):
        pgd(model, x, y, **args)
