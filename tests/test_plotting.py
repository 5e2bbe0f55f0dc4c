"""Plots of a run: PNGs from metrics, deterministic bytes, and the missing-matplotlib error."""

from __future__ import annotations

import sys

import pytest
import torch

from energyat_core import plotting
from energyat_core.errors import EnergyATError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics(robust=(0.20, 0.35, 0.40, 0.38), e_adv=(-2.0, -3.0, -4.5, -5.0)):
    return [
        {"epoch": i + 1, "clean_acc": 0.5 + 0.1 * i, "robust_acc": r, "energy_clean": -2.5 - i, "energy_adv": e}
        for i, (r, e) in enumerate(zip(robust, e_adv, strict=True))
    ]


def test_last_record_per_epoch_wins_and_records_are_sorted():
    records = [{"epoch": 2, "v": 1}, {"epoch": 1, "v": 2}, {"epoch": 2, "v": 3}, {"note": "no epoch"}]
    assert plotting.last_per_epoch(records) == [{"epoch": 1, "v": 2}, {"epoch": 2, "v": 3}]


def test_load_metrics_skips_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "clean_acc": 0.5}\n\n{"epoch": 2, "clean_a')
    assert plotting.load_metrics(path) == [{"epoch": 1, "clean_acc": 0.5}]


def test_plots_are_pngs_and_bytes_follow_the_data(tmp_path):
    acc = plotting.plot_accuracy(metrics(), tmp_path / "a" / "accuracy.png")
    energy = plotting.plot_energy(metrics(), tmp_path / "a" / "energy.png")
    for path in (acc, energy):
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    # same data, same bytes (no timestamp or version in the file)
    again = plotting.plot_accuracy(metrics(), tmp_path / "b" / "accuracy.png")
    assert again.read_bytes() == acc.read_bytes()
    # other robust accuracies: the accuracy plot changes, the energy plot does not
    changed = metrics(robust=(0.20, 0.35, 0.30, 0.25))
    assert plotting.plot_accuracy(changed, tmp_path / "c" / "accuracy.png").read_bytes() != acc.read_bytes()
    assert plotting.plot_energy(changed, tmp_path / "c" / "energy.png").read_bytes() == energy.read_bytes()
    # other adversarial energies: the energy plot changes
    changed = metrics(e_adv=(-2.0, -3.0, -4.5, -7.0))
    assert plotting.plot_energy(changed, tmp_path / "d" / "energy.png").read_bytes() != energy.read_bytes()


def test_histogram_png_follows_the_energies(tmp_path):
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(200, generator=g) - 3, torch.randn(200, generator=g) - 1
    first = plotting.plot_energy_histogram(clean, adv, tmp_path / "h1.png").read_bytes()
    assert first.startswith(PNG_SIGNATURE)
    assert plotting.plot_energy_histogram(clean, adv, tmp_path / "h2.png").read_bytes() == first
    assert plotting.plot_energy_histogram(clean, adv + 0.5, tmp_path / "h3.png").read_bytes() != first
    # all energies equal: still a valid plot
    assert plotting.plot_energy_histogram(torch.zeros(5), torch.zeros(5), tmp_path / "h4.png").stat().st_size > 0


def test_sample_energies_are_marginal_energies_of_clean_and_pgd_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).train()
    x, y = torch.rand(10, 3, 2, 2), torch.randint(0, 4, (10,))
    e_clean, e_adv = plotting.sample_energies(model, x, y, eps=8 / 255, norm="linf", steps=0, batch_size=4)
    expected = -torch.logsumexp(model(x), dim=1).detach()
    assert torch.allclose(e_clean, expected) and torch.allclose(e_adv, expected)  # steps=0: x_adv = x
    _, e_adv = plotting.sample_energies(model, x, y, eps=8 / 255, norm="linf", steps=5, batch_size=4)
    assert not torch.allclose(e_adv, expected)
    assert model.training  # the mode is restored


def test_missing_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EnergyATError) as err:
        plotting.plot_accuracy(metrics(), tmp_path / "a.png")
    assert "pip install energyat-core[plot]" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a.png").exists()
