"""Fast checks of bench/reproduce.py and its plain loop: attacks, recipes, the 3-point gate, the GPU plan.

No training runs here: the attacks run on tiny models, the comparison on made-up rows, the
data helpers on a tarball of a few generated JPEGs.
"""

from __future__ import annotations

import importlib
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1]  # bench/
EPS = 8 / 255


@pytest.fixture(scope="module")
def bench():
    """The bench modules, imported the way ``python bench/reproduce.py`` imports them (bench/ on sys.path)."""
    sys.path.insert(0, str(BENCH))
    try:
        names = ("plain_at", "cifar_subset", "cpu_check", "paper_runs", "reproduce")
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(BENCH))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def images(n: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- the plain loop's attacks ---------------------------------------------------------------
def test_plain_pgd_stays_in_the_ball_and_the_image_range(bench):
    x, y = images()
    x[0] = 0.0  # corners of [0, 1]: the projection must clip to the image range too
    x[1] = 1.0
    x_adv = bench["plain_at"].pgd(tiny_model().eval(), x, y, EPS, EPS / 4, steps=5)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2  # it moved


def test_plain_fgsm_rs_steps_one_and_a_quarter_eps_from_its_random_start(bench):
    model = tiny_model().eval()
    x, y = images()
    x = 0.25 + 0.5 * x  # away from 0 and 1, so that only the eps-ball clips
    torch.manual_seed(3)
    start = torch.empty_like(x).uniform_(-EPS, EPS)
    torch.manual_seed(3)
    x_adv = bench["plain_at"].pgd(model, x, y, EPS, 1.25 * EPS, steps=1)
    x0 = (x + start).requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x0), y), x0)
    step = x_adv - x - start
    unclipped = (start + 1.25 * EPS * grad.sign()).abs() < EPS - 1e-6
    assert unclipped.any()
    assert torch.allclose(step[unclipped], (1.25 * EPS * grad.sign())[unclipped], atol=1e-6)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_plain_trades_attack_raises_the_kl_and_stays_in_the_ball(bench):
    plain_at = bench["plain_at"]
    model = tiny_model().eval()
    x, _ = images()
    x_adv = plain_at.trades_kl(model, x, EPS, 0.007, steps=5)
    assert (x_adv - x).abs().max() <= EPS + 1e-6

    def kl(x_other):
        p = nn.functional.softmax(model(x), dim=1)
        return nn.functional.kl_div(nn.functional.log_softmax(model(x_other), dim=1), p, reduction="sum")

    with torch.no_grad():
        assert kl(x_adv) > 10 * kl((x + 0.001 * torch.randn_like(x)).clamp(0, 1))


class ModeRecorder(nn.Module):
    """Records ``self.training`` at every forward pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.modes = net, []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


@pytest.mark.parametrize(("method", "attack_modes"), [("pgd-at", True), ("fgsm-rs", True), ("trades", False)])
def test_plain_step_makes_the_adversary_in_the_recipes_batchnorm_mode(bench, method, attack_modes):
    plain_at = bench["plain_at"]
    recipe = plain_at.RECIPES[method]
    model = ModeRecorder(tiny_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = images()
    plain_at.train_step(model, opt, x, y, recipe, EPS)
    attack_passes = recipe.steps + (1 if method == "trades" else 0)  # trades: p(x) first
    assert model.modes[:attack_passes] == [attack_modes] * attack_passes
    assert all(model.modes[attack_passes:])  # the loss in train mode
    assert len(model.modes) == attack_passes + (3 if method == "trades" else 1)


def test_plain_training_depends_on_its_seed_alone(bench):
    plain_at = bench["plain_at"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=24)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 10))  # fmt: skip

    weights = []
    for noise in (1, 2):
        torch.rand(noise)  # whatever ran before in the process
        model, seconds = plain_at.train(net, plain_at.RECIPES["fgsm-rs"], x, y, epochs=2, seed=5, batch_size=8)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert len(seconds) == 2
    assert torch.equal(weights[0], weights[1])


def test_recipes_carry_the_papers_values(bench):
    recipes = bench["plain_at"].RECIPES
    assert recipes["pgd-at"].step_ratio * EPS == pytest.approx(2 / 255)
    assert recipes["fgsm-rs"].step_ratio == 1.25 and recipes["fgsm-rs"].schedule == "cyclic"
    assert recipes["trades"].step_ratio * EPS == pytest.approx(0.007)
    assert (recipes["trades"].beta, recipes["trades"].weight_decay) == (6.0, 2e-4)
    lr = bench["plain_at"].piecewise(0.1, (0.5, 0.75))
    assert [lr(0.49), lr(0.5), lr(0.8)] == pytest.approx([0.1, 0.01, 0.001])


def test_evaluate_scores_clean_and_pgd_and_leaves_the_rng_alone(bench):
    model = tiny_model()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=20)
    before = torch.get_rng_state()
    clean, robust = bench["plain_at"].evaluate(model, x, y, eps=EPS, steps=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert 0 <= robust <= clean <= 100
    assert bench["plain_at"].evaluate(model, x, y, eps=EPS, steps=3) == (clean, robust)  # same starts, same result


# -- the comparison -------------------------------------------------------------------------
def rows(gap_clean: float, gap_pgd: float = 0.0) -> list[dict]:
    out = []
    for seed, noise in ((0, -1.0), (1, 1.0)):  # per-seed spread that averages out
        for impl, clean, pgd in (("energyat", 40 + gap_clean + noise, 25 + gap_pgd - noise), ("plain", 40 + noise, 25)):
            out.append({"method": "pgd-at", "impl": impl, "seed": seed, "clean": clean, "pgd": pgd,
                        "epoch_seconds": [10.0], "cpu_seconds": 50.0, "init_cpu": 3.0, "order": len(out)})  # fmt: skip
    return out


def test_idle_makespan_hands_the_runs_to_the_first_free_worker(bench):
    runs = [{"cpu_seconds": s, "init_cpu": 2.0, "order": i} for i, s in enumerate((10.0, 4.0, 4.0, 3.0))]
    assert bench["cpu_check"].idle_makespan(runs, workers=2) == 2.0 + 11.0  # [10] and [4, 4, 3]
    assert bench["cpu_check"].idle_makespan(runs, workers=1) == 2.0 + 21.0


def test_seed_means_within_three_points_agree(bench):
    assert bench["cpu_check"].disagreements(rows(2.9, -2.9), 3.0) == []


@pytest.mark.parametrize(("gap_clean", "gap_pgd", "metric"), [(3.2, 0.0, "clean"), (0.0, -3.5, "pgd")])
def test_a_gap_above_three_points_is_a_disagreement(bench, gap_clean, gap_pgd, metric):
    (line,) = bench["cpu_check"].disagreements(rows(gap_clean, gap_pgd), 3.0)
    assert line.startswith(f"pgd-at: {metric} accuracy")


def test_a_missing_implementation_is_a_disagreement(bench):
    only_plain = [r for r in rows(0.0) if r["impl"] == "plain"]
    assert bench["cpu_check"].disagreements(only_plain, 3.0) == [
        "pgd-at: results of energyat and plain are both needed"
    ]


def test_cpu_mode_exits_non_zero_on_a_disagreement(bench, monkeypatch, tmp_path, capsys):
    reproduce, cpu_check, cifar_subset = bench["reproduce"], bench["cpu_check"], bench["cifar_subset"]
    monkeypatch.setattr(cifar_subset, "find_tarball", lambda path: tmp_path)
    monkeypatch.setattr(cifar_subset, "balanced_folder", lambda *a, **k: tmp_path)
    monkeypatch.setattr(cifar_subset, "load_arrays", lambda folder: {})
    recipe = {"attack_bn": "train"}
    result = {"rows": rows(4.0), "recipes": {"pgd-at": {"energyat": recipe, "plain": recipe, "differences": []}}}
    monkeypatch.setattr(cpu_check, "run", lambda *a: result)
    out = tmp_path / "cpu.json"
    assert reproduce.main(["cpu", "--methods", "pgd-at", "--out", str(out)]) == reproduce.EXIT_DISAGREE
    assert "FAILED: pgd-at: clean accuracy energyat 44.0% vs plain 40.0%" in capsys.readouterr().out
    result["rows"] = rows(1.0)
    assert reproduce.main(["cpu", "--methods", "pgd-at", "--out", str(out)]) == 0


def test_cpu_mode_without_the_data_says_so_in_one_line(bench, tmp_path, capsys):
    code = bench["reproduce"].main(["cpu", "--data", str(tmp_path / "absent.tar.gz"), "--out", ""])
    assert code == bench["reproduce"].EXIT_NO_DATA
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("skipped: no CIFAR-10 JPEG tarball at")


# -- the data helpers, on a tarball of generated JPEGs ----------------------------------------
def fake_tarball(path: Path, per_class: int = 3) -> Path:
    from PIL import Image

    classes = bench_classes()
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label, cls in enumerate(classes):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (25 * label, 5 * i, 100)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def bench_classes() -> tuple[str, ...]:
    return ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_balanced_folder_holds_the_same_number_of_images_per_class(bench, tmp_path):
    cifar_subset = bench["cifar_subset"]
    assert bench_classes() == cifar_subset.CLASSES
    tarball = fake_tarball(tmp_path / "c.tar.gz")
    folder = cifar_subset.balanced_folder(tarball, tmp_path / "cache", n_train=20, n_test=10)
    for cls in cifar_subset.CLASSES:
        assert len(list((folder / "train" / cls).glob("*.jpg"))) == 2
        assert len(list((folder / "test" / cls).glob("*.jpg"))) == 1
    arrays = cifar_subset.load_arrays(folder)
    assert arrays["train_x"].shape == (20, 32, 32, 3) and arrays["train_x"].dtype == np.uint8
    assert np.bincount(arrays["train_y"]).tolist() == [2] * 10
    assert cifar_subset.balanced_folder(tarball, tmp_path / "cache", n_train=20, n_test=10) == folder  # reused
    with pytest.raises(ValueError, match="multiples of 10"):
        cifar_subset.balanced_folder(tarball, tmp_path / "cache", n_train=15, n_test=10)


# -- the GPU plan ---------------------------------------------------------------------------------
def test_fit_epochs_caps_at_the_schedule_and_says_when_nothing_fits(bench):
    paper_runs = bench["paper_runs"]
    plan = paper_runs.Plan("trades", "wrn34_10", 76, epoch_seconds=60.0)
    assert paper_runs.fit_epochs(plan, seconds_left=7 * 3600, methods_left=7, eval_share=0.5) == 30
    assert paper_runs.fit_epochs(plan, seconds_left=10**7, methods_left=1, eval_share=0.5) == 76
    assert paper_runs.fit_epochs(plan, seconds_left=100, methods_left=1, eval_share=0.5) == 0
    assert paper_runs.epochs_text(plan, ran=False) == "0 of 76 (budget too small)"


def test_gpu_dry_run_prints_the_plan_without_training(bench, capsys):
    code = bench["reproduce"].main(["gpu", "--budget-minutes", "600", "--dry-run", "--methods", "fgsm-rs,pgd-at"])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["fgsm-rs"], ["pgd-at"])}
    assert "preact_resnet18" in lines["fgsm-rs"] and " / 2 " in lines["fgsm-rs"]  # backward passes per image
    assert "of 15" in lines["fgsm-rs"] or "15 (full)" in lines["fgsm-rs"]
    assert "wrn34_10" in lines["pgd-at"] and " / 11 " in lines["pgd-at"]
    assert "of 100" in lines["pgd-at"] or "100 (full)" in lines["pgd-at"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path without CUDA")
def test_gpu_run_without_cuda_writes_the_table_with_empty_cells(bench, tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert bench["reproduce"].main(["gpu", "--budget-minutes", "60", "--methods", "fgsm-rs", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device:")
    (row,) = [line for line in out.read_text().splitlines() if line.startswith("| fgsm-rs")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["fgsm-rs", "preact_resnet18"]
    assert cells[3:10] == [""] * 7  # no figures without a run


@pytest.mark.parametrize("method", ["pgd-at", "fgsm-rs", "trades"])
def test_the_presets_and_the_plain_recipes_name_the_same_settings(bench, method, tmp_path):
    from rich.console import Console

    from energyat_core.registry import get_registry
    from energyat_core.run_config import compose
    from energyat_core.trainer import Trainer

    registry = get_registry()
    flags = {"backbone": "small_cnn", "dataset": "synthetic", "device": "cpu", "epochs": 1}
    cfg = compose(registry, method=method, flags=flags, sets=["dataset.n_train=32", "dataset.n_test=8"])
    trainer = Trainer(cfg, tmp_path, registry, Console(quiet=True), quiet=True)
    cpu_check = bench["cpu_check"]
    engine = cpu_check.engine_recipe(trainer)
    plain = cpu_check.plain_recipe(bench["plain_at"].RECIPES[method], EPS, 128)
    differences = cpu_check.recipe_differences(engine, plain)
    # TRADES' code feeds [0, 1] images to the network; energyat's models normalise their input
    allowed = {"input normalisation: energyat per-channel mean/std, plain none"} if method == "trades" else set()
    assert set(differences) <= allowed, differences
