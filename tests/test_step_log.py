"""Live logs: per-step and per-epoch scalars in TensorBoard and CSV (``--log``, ``--log-every``)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from energyat_core.components import Batch
from energyat_core.run_dir import read_metrics
from energyat_core.step_log import EPOCHS_FILE, STEP_COLUMNS, STEPS_FILE, TENSORBOARD_DIR, step_values
from energyat_core.testing import TINY_ARGS, assert_one_line_error, run_cli

#: the tiny run: 64 training images in batches of 32, so 2 steps per epoch
STEPS_PER_EPOCH = 2


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tensorboard_and_csv_get_every_step_and_every_epoch(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    args = ("--epochs", "2", "--log", "tensorboard,csv")
    assert run_cli("train", *TINY_ARGS, *args, "--log-every", "1", "--out", run) == 0
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))

    acc = event_accumulator.EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    for key in ("loss", "lr", "img_per_s", "energy_adv", "grad_norm"):
        assert [e.step for e in acc.Scalars(f"step/{key}")] == steps, key
    clean = [e.value for e in acc.Scalars("step/energy_clean")]  # no attack: x_adv is x, one forward
    assert clean == pytest.approx([e.value for e in acc.Scalars("step/energy_adv")])
    metrics = read_metrics(run)
    robust = acc.Scalars("epoch/robust_acc")
    assert [e.step for e in robust] == [r["step"] for r in metrics]
    assert [e.value for e in robust] == pytest.approx([r["robust_acc"] for r in metrics])

    rows = _rows(run / STEPS_FILE)
    assert tuple(rows[0]) == STEP_COLUMNS
    assert [int(r["step"]) for r in rows] == steps and [int(r["epoch"]) for r in rows] == [1, 1, 2, 2]
    for row in rows:
        assert all(row[c] != "" for c in STEP_COLUMNS), row
        assert float(row["grad_norm"]) > 0 and float(row["img_per_s"]) > 0
    losses = [float(e.value) for e in acc.Scalars("step/loss")]
    assert losses == pytest.approx([float(r["loss"]) for r in rows])
    epochs = _rows(run / EPOCHS_FILE)
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert float(epochs[-1]["train_loss"]) == pytest.approx(metrics[-1]["train_loss"])


def test_log_every_n_steps_and_resume_appends_without_duplicates(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--log", "csv", "--log-every", "2", "--out", run) == 0
    assert [r["step"] for r in _rows(run / STEPS_FILE)] == ["2"]
    # what a kill after the last checkpoint leaves: rows of later steps, a torn last line
    with open(run / STEPS_FILE, "a") as f:
        f.write("4,2,-999.25,0.1,1,,,1\n6,2,-9")
    assert run_cli("train", "--resume", run, "--epochs", "3", "--quiet") == 0
    text = (run / STEPS_FILE).read_text()
    rows = _rows(run / STEPS_FILE)
    assert text.count("step,") == 1 and all(float(r["loss"]) >= 0 for r in rows)  # the stale rows are gone
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert [r["epoch"] for r in _rows(run / EPOCHS_FILE)] == ["1", "2", "3"]


def test_an_overwrite_logs_into_the_run_it_swaps_in(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY_ARGS, "--out", run) == 0
    sinks = "tensorboard,csv" if _has_tensorboard() else "csv"
    args = ("--epochs", "2", "--log", sinks, "--log-every", "1", "--overwrite")
    assert run_cli("train", *TINY_ARGS, *args, "--out", run) == 0  # staged until its first checkpoint
    assert [r["step"] for r in _rows(run / STEPS_FILE)] == ["1", "2", "3", "4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    if _has_tensorboard():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / TENSORBOARD_DIR))
        acc.Reload()
        assert [e.step for e in acc.Scalars("step/loss")] == [1, 2, 3, 4]
        assert [e.step for e in acc.Scalars("epoch/train_loss")] == [2, 4]


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_only_clean_or_adversarial_energy_is_logged_and_the_grad_norm_is_the_total_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    batch = Batch(model, x, y, x + 0.01)
    loss = torch.nn.functional.cross_entropy(batch.logits_adv, y)  # a loss that computes no clean logits
    loss.backward()
    params = list(model.parameters())
    values = step_values(loss, batch, params, lr=0.1)
    assert set(values) == {"loss", "lr", "grad_norm", "energy_adv"}
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert values["grad_norm"] == pytest.approx(float(expected))
    assert values["energy_adv"] == pytest.approx(float(-torch.logsumexp(batch.logits_adv.detach(), 1).mean()))
    assert values["loss"] == pytest.approx(float(loss.detach())) and values["lr"] == 0.1


def test_tensorboard_missing_is_a_one_line_error_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    run = tmp_path / "run"
    code = run_cli("train", *TINY_ARGS, "--log", "tensorboard", "--out", run)
    assert_one_line_error(code, capsys.readouterr().err, "pip install tensorboard", "--log tensorboard")
    assert not run.exists() or not any(run.iterdir())


def test_an_unknown_sink_is_a_one_line_error(tmp_path, capsys):
    code = run_cli("train", *TINY_ARGS, "--log", "wandb", "--out", tmp_path / "run")
    assert_one_line_error(code, capsys.readouterr().err, "--log", "tensorboard")
