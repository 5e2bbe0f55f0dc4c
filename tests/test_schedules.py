"""Learning-rate schedules on hand-computed points."""

from __future__ import annotations

import math

import pytest
import torch

from energyat_core.schedules import lr_at


def test_multistep():
    kw = dict(schedule="multistep", lr=0.1, milestones=(0.5, 0.75), gamma=0.1)
    assert lr_at(0, 100, **kw) == pytest.approx(0.1)
    assert lr_at(49, 100, **kw) == pytest.approx(0.1)
    assert lr_at(50, 100, **kw) == pytest.approx(0.01)
    assert lr_at(80, 100, **kw) == pytest.approx(0.001)


def test_cyclic_triangle():
    kw = dict(schedule="cyclic", lr=0.2, warmup=0.4)
    assert lr_at(0, 100, **kw) == 0
    assert lr_at(40, 100, **kw) == pytest.approx(0.2)
    assert lr_at(20, 100, **kw) == pytest.approx(0.1)
    assert lr_at(70, 100, **kw) == pytest.approx(0.1)


def test_cosine():
    assert lr_at(50, 100, schedule="cosine", lr=0.1) == pytest.approx(0.05)
    assert lr_at(25, 100, schedule="cosine", lr=0.1) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_onecycle_matches_torch():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = 2000  # torch counts phases in whole steps; the continuous form agrees to ~1 step
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total, pct_start=0.25, anneal_strategy="cos", cycle_momentum=False
    )
    for step in range(total - 1):
        ours = lr_at(step, total - 1, schedule="onecycle", lr=0.1, warmup=0.25)
        if step % 10 == 0:
            assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=2e-2, abs=1e-6), step
        opt.step()
        sched.step()
