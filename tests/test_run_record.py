"""Run records (``RUN/record.json``) and repeating a run from its folder (``energyat train --from RUN``)."""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

import pytest
import torch

from energyat_core import __version__
from energyat_core.run_dir import CONFIG_FILE, read_metrics
from energyat_core.run_record import RECORD_FILE, git_state
from energyat_core.testing import TINY_ARGS, assert_one_line_error, run_cli

#: metrics that measure time, not training
TIMING = {"img_per_s", "epoch_seconds", "elapsed_seconds"}


def _numbers(run: Path) -> list[dict[str, float]]:
    return [
        {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in TIMING}
        for record in read_metrics(run)
    ]


def test_from_repeats_a_run_with_the_same_metrics(tmp_path):
    original, again, changed = tmp_path / "original", tmp_path / "again", tmp_path / "changed"
    settings = ("--epochs", "2", "--seed", "3", "--lr", "0.05", "--schedule", "cosine", "--set", "dataset.n_train=96")
    assert run_cli("train", *TINY_ARGS, *settings, "--out", original) == 0
    assert run_cli("train", "--from", original, "--out", again, "--quiet") == 0
    first, repeat = _numbers(original), _numbers(again)
    assert len(first) == 2 and first == repeat
    assert {"train_loss", "clean_acc", "robust_acc", "energy_adv"} <= set(first[0])
    assert json.loads((again / CONFIG_FILE).read_text()) == json.loads((original / CONFIG_FILE).read_text())
    # other flags still override the run's config
    assert run_cli("train", "--from", original, "--out", changed, "--epochs", "1", "--quiet") == 0
    config = json.loads((changed / CONFIG_FILE).read_text())
    assert config["epochs"] == 1 and config["seed"] == 3 and config["dataset"]["n_train"] == 96


def test_from_without_a_run_or_with_a_config_file_is_a_one_line_error(tmp_path, capsys):
    code = run_cli("train", "--from", tmp_path / "nothing", "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(code, capsys.readouterr().err, "--from", "config.json")
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--out", run) == 0
    capsys.readouterr()
    code = run_cli("train", "--from", run, "--config", run / CONFIG_FILE, "--out", tmp_path / "b", "--quiet")
    assert_one_line_error(code, capsys.readouterr().err, "--from", "--config")
    code = run_cli("train", "--resume", run, "--from", run, "--quiet")
    assert_one_line_error(code, capsys.readouterr().err, "--resume")


def test_record_says_how_the_run_was_made_and_keeps_every_invocation(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--out", run) == 0
    (first,) = json.loads((run / RECORD_FILE).read_text())["invocations"]
    assert first["command"] == "train" and first["from_epoch"] == 0
    assert first["python"] == platform.python_version() and first["torch"] == torch.__version__
    assert first["energyat_core"] == __version__
    assert first["argv"] == sys.argv
    assert first["device"] == "cpu" and first["host"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["started"])
    core = {"name": "core", "distribution": "energyat-core", "version": __version__}
    assert core in first["plugins"] and all(set(p) == set(core) for p in first["plugins"])
    assert first["git"] is None or (re.fullmatch(r"[0-9a-f]{40}", first["git"]["commit"]) and "dirty" in first["git"])

    assert run_cli("train", "--resume", run, "--epochs", "2", "--quiet") == 0
    invocations = json.loads((run / RECORD_FILE).read_text())["invocations"]
    assert invocations[0] == first
    assert [(i["command"], i["from_epoch"]) for i in invocations] == [("train", 0), ("resume", 1)]


def test_git_state_is_recorded_only_for_a_checkout_and_never_fails(tmp_path, monkeypatch):
    package_parent = Path(__file__).resolve().parent.parent
    state = git_state(package_parent)
    if state is not None:  # tests run from a checkout
        assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and isinstance(state["dirty"], bool)
    assert git_state(tmp_path) is None  # not a checkout
    assert git_state(package_parent / "energyat_core") is None  # inside a checkout, but not its top
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_state(package_parent) is None


@pytest.mark.parametrize("text", ["", "{not json", '{"invocations": 3}'])
def test_an_unreadable_record_starts_a_new_history_on_resume(tmp_path, text):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--out", run) == 0
    (run / RECORD_FILE).write_text(text)
    assert run_cli("train", "--resume", run, "--epochs", "2", "--quiet") == 0
    (entry,) = json.loads((run / RECORD_FILE).read_text())["invocations"]
    assert entry["command"] == "resume"
