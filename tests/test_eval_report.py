"""``energyat eval`` reports (eval.json, RobustBench field names), sanity checks, and ``energyat plot``."""

from __future__ import annotations

import json

import pytest
import torch

from energyat_core.cli.evaluate import merge_options
from energyat_core.errors import ConfigError
from energyat_core.evaluation import eps_text, report
from energyat_core.testing import quick_train

T, F = True, False


def test_report_is_the_per_point_worst_case():
    clean = torch.tensor([T, T, T, T, F])
    per_attack = {
        "pgd20-ce": torch.tensor([T, F, T, T, T]),  # the last point is wrong clean: never counts
        "autoattack-apgd-ce": torch.tensor([T, T, F, T, F]),
        "autoattack-apgd-t": torch.tensor([T, T, T, F, F]),
    }
    groups = {"autoattack_acc": ["autoattack-apgd-ce", "autoattack-apgd-t"]}  # an evaluator's report_field
    r = report(
        clean=clean,
        per_attack=per_attack,
        eps=8 / 255,
        norm="linf",
        dataset="cifar10",
        architecture="wrn",
        groups=groups,
    )
    assert r["clean_acc"] == 80.0
    assert r["attacks"] == {"pgd20-ce": 60.0, "autoattack-apgd-ce": 60.0, "autoattack-apgd-t": 60.0}
    assert r["autoattack_acc"] == 40.0  # points 0 and 1
    assert r["robust_acc"] == 20.0  # only point 0 survives everything
    assert (r["dataset"], r["architecture"], r["threat_model"], r["eps"], r["n_examples"]) == (
        "cifar10",
        "wrn",
        "Linf",
        "8/255",
        5,
    )
    no_aa = report(clean=clean, per_attack={"pgd20-ce": per_attack["pgd20-ce"]}, eps=0.5, norm="l2", dataset="d",
                   architecture="a")  # fmt: skip
    assert "autoattack_acc" not in no_aa and (no_aa["threat_model"], no_aa["eps"]) == ("L2", "0.5")


@pytest.mark.parametrize(
    ("eps", "norm", "text"), [(8 / 255, "linf", "8/255"), (4 / 255, "linf", "4/255"), (0.5, "l2", "0.5")]
)
def test_eps_text(eps, norm, text):
    assert eps_text(eps, norm) == text


def build_evaluators(registry, specs, options):
    """The evaluators ``energyat eval --evaluator SPEC --set evaluator.KEY=VALUE`` builds."""
    return [registry.create("evaluator", n, **o) for n, o in merge_options(registry, "evaluator", specs, options)]


def test_evaluator_options_plain_qualified_and_unknown(registry):
    evs = build_evaluators(registry, ["pgd:30"], {"restarts": "2", "pgd.objectives": "ce"})
    assert (evs[0].config.steps, evs[0].config.restarts, evs[0].config.objectives) == (30, 2, ("ce",))
    with pytest.raises(ConfigError, match="no evaluator run here has an option 'n_iter'"):
        build_evaluators(registry, ["pgd"], {"n_iter": "5"})
    with pytest.raises(ConfigError, match="names evaluator 'other', which is not run"):
        build_evaluators(registry, ["pgd"], {"other.n_iter": "5"})
    with pytest.raises(ConfigError, match="has no option 'bogus'"):
        build_evaluators(registry, ["pgd"], {"pgd.bogus": "5"})
    with pytest.raises(ConfigError, match="option 'steps' must be >= 1"):
        build_evaluators(registry, ["pgd"], {"steps": "0"})


# --- end to end on a quick standard-training run ---------------------------------------------
@pytest.fixture(scope="module")
def std_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "std"
    quick_train(run_dir, "--attack", "none", "--loss", "ce", "--epochs", "2", "--eval-n", "100")
    return run_dir


REPORT_FIELDS = {
    "dataset",
    "architecture",
    "threat_model",
    "eps",
    "n_examples",
    "clean_acc",
    "robust_acc",
    "attacks",
    "checkpoint",
    "seed",
    "precision",
    "evaluators",
    "sanity_warnings",
}


def test_eval_writes_every_field_and_a_table(std_run, cli):
    code, out, err = cli(
        "eval", std_run, "--n", "60", "--set", "evaluator.steps=3", "--batch-size", "30", "--device", "cpu"
    )
    assert code == 0, err
    result = json.loads((std_run / "eval.json").read_text())
    assert set(result) >= REPORT_FIELDS
    assert (result["dataset"], result["architecture"], result["threat_model"]) == ("synthetic", "small_cnn", "Linf")
    assert (result["eps"], result["n_examples"], result["sanity_warnings"]) == ("8/255", 60, [])
    assert set(result["attacks"]) == {"pgd3-ce", "pgd3-cw"}
    assert result["robust_acc"] <= min(result["attacks"].values()) <= result["clean_acc"]
    assert result["evaluators"]["pgd"]["steps"] == 3
    assert "worst case over attacks" in out and "clean" in out


def test_eval_warns_before_attacking_a_model_with_softmax_outputs(std_run, cli, monkeypatch, tmp_path):
    import energyat_core.cli.evaluate as evaluate_cli

    real_load_run = evaluate_cli.load_run

    class Softmaxed(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).softmax(1)

    def load_softmaxed(*args, **kwargs):
        run = real_load_run(*args, **kwargs)
        run.model = Softmaxed(run.model)
        return run

    monkeypatch.setattr(evaluate_cli, "load_run", load_softmaxed)
    out_file = tmp_path / "e.json"
    code, out, err = cli("eval", std_run, "--n", "20", "--evaluator", "pgd:1", "--device", "cpu", "--out", out_file)
    assert code == 0, err
    warnings = json.loads(out_file.read_text())["sanity_warnings"]
    assert len(warnings) == 1 and "probabilities" in warnings[0]
    assert out.index("warning: the model's outputs look like probabilities") < out.index("worst case over attacks")
    code, out, _ = cli(
        "eval", std_run, "--n", "20", "--evaluator", "pgd:1", "--device", "cpu", "--out", out_file, "--no-sanity"
    )
    assert code == 0 and "warning:" not in out
    assert json.loads(out_file.read_text())["sanity_warnings"] == []


def test_plot_writes_pngs_that_follow_metrics(std_run, cli, tmp_path):
    code, out, err = cli("plot", std_run, "--n", "60", "--steps", "2", "--device", "cpu")
    assert code == 0, err
    plots = std_run / "plots"
    names = ("accuracy.png", "energy.png", "energy_histogram.png")
    for name in names:
        data = (plots / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert str(plots / name) in out.replace("\n", "")
    before = {name: (plots / name).read_bytes() for name in names[:2]}

    # other numbers in metrics.jsonl give other pictures
    edited = tmp_path / "edited"
    edited.mkdir()
    records = [json.loads(line) for line in (std_run / "metrics.jsonl").read_text().splitlines()]
    records[-1]["robust_acc"] = records[-1]["robust_acc"] / 2 + 0.3
    records[-1]["energy_adv"] = records[-1]["energy_adv"] - 1.0
    (edited / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, err = cli("plot", edited, "--no-histogram", "--out", tmp_path / "p")
    assert code == 0, err
    for name in names[:2]:
        assert (tmp_path / "p" / name).read_bytes() != before[name], name
    assert not (tmp_path / "p" / names[2]).exists()


def test_plot_errors_are_one_line(cli, tmp_path, monkeypatch):
    code, _, err = cli("plot", tmp_path)
    assert code == 2 and "has no metrics.jsonl" in err
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.1}\n')
    code, _, err = cli("plot", tmp_path)  # metrics but no checkpoint for the histogram
    assert code == 2 and "holds no model.safetensors" in err
    import sys

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    code, _, err = cli("plot", tmp_path, "--no-histogram")
    assert code == 2 and "pip install energyat-core[plot]" in err and len(err.strip().splitlines()) == 1
