"""Tests of the energyat-autoattack plugin: config, library set-up, masks, resume, and AutoAttack vs PGD."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from energyat_autoattack.evaluator import AutoAttackConfig, AutoAttackEvaluator
from energyat_autoattack.library import set_apgd_iterations
from energyat_autoattack.state import STATE_FILE
from energyat_core.api import ConfigError, RunContext
from energyat_core.testing import fresh_registry, quick_train, run_cli

EPS = 8 / 255
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as tests/conftest.py: CPU runs share the machine


# --- a model whose robust points are known by hand -----------------------------------------
class MeanBins(nn.Module):
    """4 classes by the mean pixel value m(x): class k is nearest to centre (2k+1)/8.

    logits_k = -scale * (m(x) - c_k)^2, so the decision boundaries are m = 0.25, 0.5, 0.75.
    An L-inf perturbation of size eps moves m by at most eps, and exactly eps when it moves
    every pixel (away from the [0,1] box): a correctly classified point is robust iff its
    m is further than eps from every boundary.
    """

    centres = torch.tensor([0.125, 0.375, 0.625, 0.875])

    def __init__(self, scale: float = 200.0, softmax: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.softmax = softmax
        self.dummy = nn.Parameter(torch.zeros(()))  # so that the model has weights to fingerprint

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        logits = -self.scale * (m - self.centres.to(x.device)) ** 2 + self.dummy
        return logits.softmax(1) if self.softmax else logits


#: mean pixel values: far from boundaries (robust) or within eps/2 of one (breakable)
MEANS = [0.12, 0.38, 0.62, 0.88, 0.25 + 0.5 * EPS, 0.5 - 0.5 * EPS, 0.75 + 0.4 * EPS, 0.40, 0.60, 0.1]
LABELS = [0, 1, 2, 3, 1, 1, 3, 1, 2, 1]  # the last one is misclassified clean
ROBUST = [True, True, True, True, False, False, False, True, True, False]


def mean_bins_data():
    x = torch.tensor(MEANS).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    return x, torch.tensor(LABELS)


def evaluator(spec: str = "autoattack", **options) -> AutoAttackEvaluator:
    return fresh_registry().create("evaluator", spec, **options)


# --- config ----------------------------------------------------------------------------------
def test_config_defaults_and_attack_list_as_version():
    cfg = AutoAttackConfig()
    assert (cfg.version, cfg.attacks, cfg.seed, cfg.cascade, cfg.resume) == ("standard", (), 0, True, True)
    listed = AutoAttackConfig(version="apgd-ce, apgd-t")
    assert (listed.version, listed.attacks) == ("custom", ("apgd-ce", "apgd-t"))
    assert AutoAttackConfig(version="custom", attacks=("square",)).attacks == ("square",)
    # `--evaluator autoattack:VERSION` sets the first option, the version (or an attack list)
    assert evaluator("autoattack:plus").config.version == "plus"
    listed = evaluator("autoattack:apgd-ce,square", n_iter="5").config
    assert (listed.version, listed.attacks, listed.n_iter) == ("custom", ("apgd-ce", "square"), 5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"version": "strong"}, "unknown version"),
        ({"version": "custom"}, "needs attacks"),
        ({"attacks": "apgd-ce"}, "only used with version=custom"),
        ({"version": "apgd-ce,pgd"}, "unknown version"),
        ({"version": "apgd-ce", "attacks": "square"}, "either as version or as attacks"),
        ({"version": "custom", "attacks": "apgd-ce,pgd"}, "'attacks' must be one of apgd-ce"),
        ({"version": "custom", "attacks": "apgd-ce,apgd-ce"}, "twice"),
        ({"n_iter": "0"}, "'n_iter' must be >= 1"),
    ],
)
def test_config_errors_are_one_line(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        evaluator(**options)
    assert "\n" not in str(err.value)


def test_every_option_has_help():
    import dataclasses

    for f in dataclasses.fields(AutoAttackConfig):
        assert f.metadata.get("help"), f.name


# --- the library's AutoAttack object ---------------------------------------------------------
def test_versions_select_the_published_attacks():
    model = MeanBins()
    std = AutoAttackEvaluator().build(model, eps=EPS, norm="linf", num_classes=10, device=torch.device("cpu"))
    assert std.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (std.norm, std.epsilon, std.seed) == ("Linf", EPS, 0)
    assert (std.apgd.n_iter, std.apgd.n_restarts, std.apgd_targeted.n_target_classes) == (100, 1, 9)
    assert std.square.n_queries == 5000
    plus = AutoAttackEvaluator(AutoAttackConfig(version="plus")).build(
        model, eps=0.5, norm="l2", num_classes=10, device=torch.device("cpu")
    )
    assert plus.attacks_to_run == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert (plus.norm, plus.apgd.n_restarts, plus.fab.n_restarts) == ("L2", 5, 5)
    with pytest.raises(ConfigError, match="threat model"):
        AutoAttackEvaluator().build(model, eps=1.0, norm="l1", num_classes=10, device=torch.device("cpu"))


def test_overrides_and_target_classes_capped():
    cfg = AutoAttackConfig(n_iter=7, n_restarts=2, n_queries=50, n_target_classes=20, seed=3)
    aa = AutoAttackEvaluator(cfg).build(MeanBins(), eps=EPS, norm="linf", num_classes=4, device=torch.device("cpu"))
    assert aa.apgd.n_iter == aa.apgd_targeted.n_iter == aa.fab.n_iter == 7
    assert (aa.apgd.n_restarts, aa.fab.n_restarts, aa.square.n_queries, aa.seed) == (2, 2, 50, 3)
    assert aa.apgd_targeted.n_target_classes == aa.fab.n_target_classes == 3  # 4 classes: 3 possible targets


@pytest.mark.parametrize("n_iter", [1, 5, 10, 37, 100])
def test_apgd_iterations_match_the_library_constructor(n_iter):
    from pyautoattack.autopgd_base import APGDAttack

    fresh = APGDAttack(MeanBins(), n_iter=n_iter, eps=EPS, device="cpu")
    changed = APGDAttack(MeanBins(), n_iter=100, eps=EPS, device="cpu")
    set_apgd_iterations(changed, n_iter)
    for attr in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        assert getattr(changed, attr) == getattr(fresh, attr), attr


# --- masks on a model whose answer is known -----------------------------------------------------
@pytest.mark.parametrize("cascade", [True, False])
def test_masks_match_the_hand_computed_robust_points(cascade):
    torch.manual_seed(0)
    x, y = mean_bins_data()
    ev = AutoAttackEvaluator(AutoAttackConfig(version="apgd-ce,apgd-t", n_iter=10, n_restarts=1, cascade=cascade))
    out = ev.run(MeanBins().eval(), x, y, eps=EPS, norm="linf", batch_size=10)
    assert list(out) == ["autoattack-apgd-ce", "autoattack-apgd-t"]
    for mask in out.values():
        assert mask.tolist() == ROBUST
    assert ev.attacked["apgd-ce"] == 9  # every clean-correct point
    assert ev.attacked["apgd-t"] == (6 if cascade else 9)  # cascade: only the survivors of apgd-ce
    clean = torch.tensor([True] * 9 + [False])
    worst = clean & torch.stack(list(out.values())).all(0)  # what `energyat eval` reports as autoattack_acc
    assert AutoAttackEvaluator.report_field == "autoattack_acc"
    assert worst.float().mean().item() == pytest.approx(0.6)
    assert all((clean & mask).float().mean().item() == pytest.approx(0.6) for mask in out.values())


def test_library_checks_are_collected_once():
    x, y = mean_bins_data()
    ev = AutoAttackEvaluator(AutoAttackConfig(version="apgd-ce", n_iter=1, n_restarts=1))
    ev.run(MeanBins(softmax=True).eval(), x, y, eps=EPS, norm="linf", batch_size=3)
    probability = [m for m in ev.library_warnings if "probability" in m]
    assert len(probability) == 1  # logged for every batch by the library, shown once
    ev.run(MeanBins().eval(), x, y, eps=EPS, norm="linf", batch_size=10)
    assert not any("probability" in m for m in ev.library_warnings)


# --- per-point bookkeeping and resume, with a scripted stand-in for the library -------------------
class ScriptedAutoAttack:
    """Stands in for the library's AutoAttack: attack a fools exactly the points in FOOLS[a]."""

    FOOLS = {"apgd-ce": {1, 4}, "apgd-t": {1, 2, 6}, "square": {7}}

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.attacks_to_run = list(self.FOOLS)
        self.calls: list[tuple[str, list[int]]] = []
        self.interrupt_after = interrupt_after

    def run_standard_evaluation(self, x, y, *, batch_size):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        (attack,) = self.attacks_to_run
        ids = x.flatten(1)[:, 0].round().long().tolist()  # the point's index is written in its pixels
        self.calls.append((attack, ids))
        y_adv = y.clone()
        for i, point in enumerate(ids):
            if point in self.FOOLS[attack]:
                y_adv[i] = (y[i] + 1) % 3
        return x, y_adv


class Scripted(AutoAttackEvaluator):
    def __init__(self, fake, **options):
        super().__init__(AutoAttackConfig(version="custom", attacks=("apgd-ce", "apgd-t", "square"), **options))
        self.fake = fake

    def build(self, model, **kwargs):
        self.fake.attacks_to_run = list(self.config.attacks)
        return self.fake

    def describe(self, aa, **kwargs):
        return {"attacks": list(self.config.attacks)}


class IndexModel(nn.Module):
    """Predicts class (index % 3) for a point whose pixels hold its index: clean-correct unless index is 0 or 5."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = x.flatten(1)[:, 0].round().long()
        pred = torch.where((idx == 0) | (idx == 5), (idx + 1) % 3, idx % 3)
        return torch.nn.functional.one_hot(pred, 3).float() * self.w


def index_data(n: int = 10):
    x = torch.arange(n, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return x, torch.arange(n) % 3


CLEAN = [i not in (0, 5) for i in range(10)]


def test_cascade_masks_are_cumulative_and_individual_masks_are_not():
    x, y = index_data()
    model = IndexModel()
    fake = ScriptedAutoAttack()
    out = Scripted(fake, resume=False).run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    assert out["autoattack-apgd-ce"].tolist() == [c and i not in (1, 4) for i, c in enumerate(CLEAN)]
    assert out["autoattack-apgd-t"].tolist() == [c and i not in (1, 2, 4, 6) for i, c in enumerate(CLEAN)]
    assert out["autoattack-square"].tolist() == [c and i not in (1, 2, 4, 6, 7) for i, c in enumerate(CLEAN)]
    attacked = {a: sorted(i for b, ids in fake.calls if b == a for i in ids) for a in ("apgd-ce", "apgd-t", "square")}
    assert attacked == {"apgd-ce": [1, 2, 3, 4, 6, 7, 8, 9], "apgd-t": [2, 3, 6, 7, 8, 9], "square": [3, 7, 8, 9]}

    individual = Scripted(ScriptedAutoAttack(), resume=False, cascade=False)
    out = individual.run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    assert out["autoattack-apgd-t"].tolist() == [c and i not in (1, 2, 6) for i, c in enumerate(CLEAN)]
    assert out["autoattack-square"].tolist() == [c and i != 7 for i, c in enumerate(CLEAN)]


def test_interrupted_run_resumes_from_the_state_file(tmp_path):
    x, y = index_data()
    model = IndexModel()
    ctx = RunContext(device=torch.device("cpu"), num_classes=3, run_dir=tmp_path)
    reference = Scripted(ScriptedAutoAttack(), resume=False).run(model, x, y, eps=EPS, norm="linf", batch_size=3)

    first = Scripted(ScriptedAutoAttack(interrupt_after=4))
    first.setup(ctx)
    with pytest.raises(KeyboardInterrupt):
        first.run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    done_before = first.fake.calls  # apgd-ce: 3 batches (8 points); apgd-t: 1 batch (3 points)
    assert [a for a, _ in done_before] == ["apgd-ce"] * 3 + ["apgd-t"]
    assert (tmp_path / STATE_FILE).is_file()

    second = Scripted(ScriptedAutoAttack())
    second.setup(ctx)
    out = second.run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    assert {k: v.tolist() for k, v in out.items()} == {k: v.tolist() for k, v in reference.items()}
    redone = [(a, ids) for a, ids in second.fake.calls]
    assert [a for a, _ in redone] == ["apgd-t", "square", "square"]  # apgd-ce skipped, apgd-t resumed
    assert sorted(redone[0][1]) == [7, 8, 9]
    assert second.attacked == {"apgd-ce": 0, "apgd-t": 3, "square": 4}

    third = Scripted(ScriptedAutoAttack())  # everything done: no attack runs at all
    third.setup(ctx)
    third.run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    assert third.fake.calls == []

    with torch.no_grad():
        model.w.mul_(2)  # other weights: the stored outcomes must not be reused
    fourth = Scripted(ScriptedAutoAttack())
    fourth.setup(ctx)
    fourth.run(model, x, y, eps=EPS, norm="linf", batch_size=3)
    assert fourth.attacked == {"apgd-ce": 8, "apgd-t": 6, "square": 4}


# --- end to end: a PGD-AT model, AutoAttack vs PGD-20 through `energyat eval` -------------------
@pytest.fixture(scope="module")
def pgd_at_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("aa") / "pgd-at"
    metrics = quick_train(run_dir, "--method", "pgd-at", "--set", "attack.steps=3", "--epochs", "2")
    return run_dir, metrics


def test_autoattack_is_at_most_pgd20_and_resumes(pgd_at_run, monkeypatch):
    run_dir, _ = pgd_at_run
    args = [
        "eval", run_dir, "--n", "100", "--device", "cpu",
        "--evaluator", "autoattack:apgd-ce,apgd-t", "--set", "evaluator.autoattack.n_iter=25",
        "--set", "evaluator.autoattack.n_target_classes=3", "--set", "evaluator.autoattack.n_restarts=1",
    ]  # fmt: skip
    from pyautoattack import AutoAttack

    original = AutoAttack.run_standard_evaluation
    calls: list[tuple[str, int]] = []
    interrupt = [True]

    def counted(self, x, *a, **kw):
        if interrupt[0] and len(calls) == 1:
            raise KeyboardInterrupt  # after the first batch (of 10 points) of apgd-ce
        calls.append((self.attacks_to_run[0], len(x)))
        return original(self, x, *a, **kw)

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", counted)
    assert run_cli(*args, "--batch-size", "10") == 130  # AutoAttack only
    assert (run_dir / STATE_FILE).is_file() and not (run_dir / "eval.json").exists()
    assert calls == [("apgd-ce", 10)]
    interrupt[0] = False
    calls.clear()
    assert run_cli(*args, "--batch-size", "50", "--evaluator", "pgd") == 0  # and the PGD-20 evaluator
    result = json.loads((run_dir / "eval.json").read_text())

    for key in ("dataset", "architecture", "threat_model", "eps", "n_examples", "clean_acc", "robust_acc"):
        assert key in result, key
    assert result["dataset"] == "synthetic" and result["architecture"] == "small_cnn"
    assert (result["threat_model"], result["eps"], result["n_examples"]) == ("Linf", "8/255", 100)
    assert set(result["attacks"]) == {"pgd20-ce", "pgd20-cw", "autoattack-apgd-ce", "autoattack-apgd-t"}
    aa, pgd20 = result["autoattack_acc"], min(result["attacks"]["pgd20-ce"], result["attacks"]["pgd20-cw"])
    print(f"clean {result['clean_acc']}  PGD-20 {pgd20}  AutoAttack {aa}  worst {result['robust_acc']}")
    assert result["clean_acc"] > pgd20 > 0, "the PGD-AT model should keep some, not all, of its accuracy"
    assert aa <= pgd20
    assert result["autoattack_acc"] == result["attacks"]["autoattack-apgd-t"]  # cascade: the last is cumulative
    assert result["robust_acc"] <= min(aa, pgd20)
    assert result["evaluators"]["autoattack"]["attacks"] == ["apgd-ce", "apgd-t"]
    clean_correct = round(result["clean_acc"])  # of 100 points
    assert sum(k for a, k in calls if a == "apgd-ce") == clean_correct - 10  # the first 10 were not attacked again
