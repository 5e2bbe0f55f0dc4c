"""One threat model per run (--eps, --norm, --step), and the recipe pieces of issue "Faithful":
smoothed labels, momentum cycling, Wong et al.'s early stop, eval on the whole test split."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from energyat_core import trainer as trainer_module
from energyat_core.api import ConfigError, ThreatModel, pgd, smoothed_cross_entropy
from energyat_core.early_stop import collapsed
from energyat_core.schedules import inert_cycle_note, lr_at, momentum_at
from energyat_core.testing import TINY_ARGS, compose_config, make_trainer, quick_train, run_cli

NOISE = ("--attack", "noise")  # the example plugin's attack: uniform noise in the run's L-inf ball


# -- the run's threat model ---------------------------------------------------------------
def test_eps_defaults_to_the_norms_radius_and_is_recorded(registry, tmp_path):
    assert compose_config(registry).threat == ThreatModel(8 / 255, "linf", None)
    l2 = compose_config(registry, flags={"norm": "l2"})
    assert l2.eps == 0.5 and l2.threat == ThreatModel(0.5, "l2", None)
    cfg = compose_config(registry, flags={"eps": "16/255", "step": "3/255"})
    doc = json.loads(cfg.to_json())
    assert (doc["eps"], doc["norm"], doc["step"]) == (pytest.approx(16 / 255), "linf", pytest.approx(3 / 255))
    assert ThreatModel(0.1, "linf", None).step_size(0.25) == pytest.approx(0.025)  # relative rule
    assert ThreatModel(0.1, "linf", 0.01).step_size(0.25) == 0.01  # --step wins


def test_the_training_attack_gets_the_runs_threat_model(registry, tmp_path):
    cfg = compose_config(registry, flags={"device": "cpu", "eps": "16/255", "step": "1/255", "epochs": 1})
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    assert trainer.components["attack"].threat == ThreatModel(16 / 255, "linf", 1 / 255)
    noise = make_trainer(
        compose_config(registry, flags={"device": "cpu", "eps": "16/255", "attack": "noise"}), tmp_path / "n", registry
    )
    x = torch.rand(64, 3, 32, 32)
    delta = noise.components["attack"](noise.model, x, torch.zeros(64, dtype=torch.long)) - x
    assert delta.abs().max().item() <= 16 / 255 + 1e-6 and delta.abs().max().item() > 15 / 255


def test_an_attack_refuses_a_norm_it_does_not_support(cli, tmp_path):
    code, _, err = cli("train", *TINY_ARGS, *NOISE, "--norm", "l2", "--out", tmp_path / "r")
    assert code == 2 and "attack 'noise' does not support the run's norm l2 (it supports linf)" in err
    assert len(err.strip().splitlines()) == 1


def test_pgd_with_eps_zero_is_the_identity_without_passes():
    calls = []

    def model(x):
        calls.append(1)
        return x.flatten(1)[:, :3]

    x = torch.rand(4, 3, 2, 2)
    rng = torch.get_rng_state()
    out = pgd(model, x, torch.zeros(4, dtype=torch.long), eps=0.0, alpha=0.1, steps=5)
    assert torch.equal(out, x) and not calls and torch.equal(torch.get_rng_state(), rng)


def test_eval_defaults_to_the_runs_threat_model_and_the_whole_test_split(tmp_path, cli):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--eps", "4/255", "--out", run) == 0
    code, _, err = cli("eval", run, "--set", "evaluator.steps=2", "--device", "cpu", "--no-sanity")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert (result["eps"], result["threat_model"], result["n_examples"]) == ("4/255", "Linf", 32)  # all 32 test images
    code, _, err = cli("eval", run, "--norm", "l2", "--set", "evaluator.steps=2", "--device", "cpu", "--no-sanity")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert (result["eps"], result["threat_model"]) == ("0.5", "L2")  # another norm: its own default radius


# -- recipe pieces ----------------------------------------------------------------------------
def test_smoothed_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    log_p = torch.log_softmax(logits, 1)[0]
    y = torch.tensor([0])
    want = -(0.9 * log_p[0] + (0.1 / 3) * (log_p[1] + log_p[2] + log_p[3]))  # true 0.9, the others 0.1/(K-1)
    assert smoothed_cross_entropy(logits, y, 0.1).item() == pytest.approx(want.item(), rel=1e-6)
    assert smoothed_cross_entropy(logits, y, 0.0).item() == pytest.approx(-log_p[0].item(), rel=1e-6)


def test_momentum_cycles_inversely_to_the_lr():
    total = 1000
    onecycle = dict(schedule="onecycle", cycle=(0.85, 0.95), warmup=0.25)
    assert momentum_at(0, total, **onecycle) == pytest.approx(0.95)  # lowest lr, highest momentum
    assert momentum_at(250, total, **onecycle) == pytest.approx(0.85)  # peak lr
    assert momentum_at(total, total, **onecycle) == pytest.approx(0.95)
    assert momentum_at(125, total, **onecycle) == pytest.approx(0.90)  # cosine half-way
    cyclic = dict(schedule="cyclic", cycle=(0.8, 0.9), warmup=0.5)
    assert [momentum_at(s, total, **cyclic) for s in (0, 250, 500, 750, 1000)] == pytest.approx(
        [0.9, 0.85, 0.8, 0.85, 0.9]
    )
    assert lr_at(500, total, schedule="cyclic", lr=0.2, warmup=0.5) == pytest.approx(0.2)  # Wong et al.'s peak
    assert momentum_at(10, total, schedule="onecycle", cycle=(), warmup=0.25) is None


def test_the_trainer_sets_the_cycled_momentum(registry, tmp_path):
    flags = {"device": "cpu", "schedule": "onecycle", "momentum_cycle": "0.85,0.95", "epochs": 2}
    trainer = make_trainer(
        compose_config(registry, flags=flags, sets=["dataset.n_train=256"]), tmp_path / "r", registry
    )
    trainer.counters.step = trainer.total_steps // 4  # the peak of the lr
    trainer._set_lr()
    assert trainer.optimizer.param_groups[0]["momentum"] == pytest.approx(0.85, abs=1e-3)


def test_a_momentum_cycle_without_a_cyclic_schedule_is_inert_and_said_so(registry):
    cfg = compose_config(registry, flags={"momentum_cycle": "0.85,0.95", "schedule": "cosine"})
    assert momentum_at(10, 100, schedule="cosine", cycle=cfg.momentum_cycle) is None
    assert "momentum stays constant" in inert_cycle_note(cfg)
    assert (
        inert_cycle_note(compose_config(registry, flags={"momentum_cycle": "0.85,0.95", "schedule": "onecycle"}))
        is None
    )
    with pytest.raises(ConfigError, match="LOW,HIGH with LOW <= HIGH"):
        compose_config(registry, flags={"momentum_cycle": "0.95,0.85"})


def test_collapse_rule():
    assert collapsed(0.5, 0.29) and not collapsed(0.5, 0.31) and not collapsed(0.0, 0.0)


def test_early_stop_keeps_the_epoch_before_a_collapse(tmp_path, monkeypatch):
    seen = []

    def checks(values):
        it = iter(values)

        def fake_check(model, x, y, threat, dist, autocast):
            seen.append((len(x), threat.eps))
            return next(it)

        return fake_check

    args = (*TINY_ARGS, "--epochs", "4", "--early-stop", "--eps", "4/255")
    monkeypatch.setattr(trainer_module, "check_accuracy", checks([0.6, 0.7, 0.1]))  # epoch 3 collapses
    metrics = quick_train(tmp_path / "run", *args, quick=False)
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["early_stop_acc"] == pytest.approx(0.7)
    assert seen == [(32, pytest.approx(4 / 255))] * 3  # the epoch's first batch, at the run's radius
    assert json.loads((tmp_path / "run" / "config.json").read_text())["early_stop"] is True

    # the kept weights are epoch 2's: those of the same run stopped after two epochs
    monkeypatch.setattr(trainer_module, "check_accuracy", checks([0.6, 0.7]))
    quick_train(tmp_path / "two", *args, "--stop-after", "2", quick=False)
    kept, two = load_file(tmp_path / "run" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert kept.keys() == two.keys() and all(torch.equal(kept[k], two[k]) for k in kept)
