"""``reproduce.py gpu``: each preset's paper recipe on full CIFAR-10, within a time budget.

The plan gives every method an even share of the budget (re-divided before each method
from what is left), keeps ``--eval-share`` of the share for the evaluation and trains as
many epochs of the preset's schedule as fit in the rest (the full schedule when it fits;
the lr schedule is then compressed to those epochs, and the table says how many of how
many ran). Seconds per epoch come from timing a few training steps of the real run on the
device; the ``--dry-run`` plan, which trains nothing, estimates them instead from the
backbone's FLOPs (counted), the forward and backward passes per image of the preset
(counted by energyat on one small step) and an assumed throughput (``--plan-tflops``).

Training is ``energyat train``, evaluation ``energyat eval RUN --evaluator pgd:50
--evaluator autoattack:standard`` on the whole test split. The markdown table holds only
what was measured: without CUDA, or for a method the budget cannot fit, its cells stay empty.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cifar_subset
import torch
from rich.console import Console

#: the backbone each method's reference number was measured on; "reference": the preset's own
#: reference_backbone; None: the preset's default (no number is pinned to a backbone)
PAPER_BACKBONES: dict[str, str | None] = {
    "pgd-at": "reference",
    "trades": "wrn34_10",
    "fgsm-rs": "preact_resnet18",
    "fgsm-sdi": "resnet18",
    "weat": "resnet18",
    "bat": None,
    "jeat": None,
}
TRAIN_IMAGES = 50_000
CALIBRATION_STEPS, CALIBRATION_WARMUP = 10, 3
PASS_COUNT_STEPS = 20
EPOCH_OVERHEAD = 1.05  # the per-epoch held-out evaluation and checkpoint, on top of the timed steps


@dataclass
class Plan:
    """One method's run: what it trains and how long an epoch is expected to take."""

    method: str
    backbone: str
    full_epochs: int
    reference: str = ""
    fwd_passes: float = 0.0  # per training image, counted by energyat (dry run)
    bwd_passes: float = 0.0
    epoch_seconds: float = 0.0  # estimated (dry run) or timed on the device
    epochs: int = 0


def backbone_for(method: str, registry: Any) -> str:
    """The backbone of ``method``'s reference number (:data:`PAPER_BACKBONES`)."""
    choice = PAPER_BACKBONES.get(method)
    preset = registry.method(method)
    if choice == "reference":
        choice = getattr(preset, "reference_backbone", None)
    if choice is None:
        from energyat_core.run_config import compose

        choice = compose(registry, method=method).spec("backbone") or "preact_resnet18"
    return choice


def count_passes(method: str, registry: Any, steps: int = PASS_COUNT_STEPS) -> tuple[float, float]:
    """Forward and backward passes per training image of ``method``, counted over a few small CPU steps.

    Enough steps that an update made every 20 batches (FGSM-SDI's generator) is averaged in.
    """
    from energyat_core.epoch_stats import EpochStats
    from energyat_core.run_config import compose
    from energyat_core.trainer import Trainer

    flags = {"backbone": "small_cnn", "dataset": "synthetic", "device": "cpu", "batch_size": 8, "epochs": 1}
    cfg = compose(registry, method=method, flags=flags, sets=["dataset.n_train=64", "dataset.n_test=16"])
    with tempfile.TemporaryDirectory(prefix="energyat-plan-") as tmp:
        trainer = Trainer(cfg, tmp, registry, Console(quiet=True), quiet=True)
        stats, seen, epoch = EpochStats.zeros(trainer.device), 0, 0
        f0, b0 = trainer.passes.forward, trainer.passes.backward
        while seen < steps * 8:
            for x, y in trainer.loader.epoch(epoch):
                trainer.train_step(x, y, stats)
                seen += len(y)
            epoch += 1
        return (trainer.passes.forward - f0) / seen, (trainer.passes.backward - b0) / seen


def forward_flops(backbone: str, registry: Any) -> float:
    """FLOPs of one forward pass of ``backbone`` on one 32x32 image (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from energyat_core.run_config import compose

    cfg = compose(registry, flags={"backbone": backbone})
    net = registry.create_part("backbone", cfg.parts["backbone"]).build(10).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    return float(counter.get_total_flops())


def base_plan(method: str, registry: Any) -> Plan:
    """``method`` on its paper's backbone with its full schedule; no timing yet."""
    from energyat_core.run_config import compose

    epochs = compose(registry, method=method).epochs
    return Plan(method, backbone_for(method, registry), epochs, reference=registry.method(method).reference)


def estimate_plan(method: str, registry: Any, tflops: float) -> Plan:
    """The dry-run plan of ``method``: seconds per epoch from FLOPs, passes and ``tflops``."""
    plan = base_plan(method, registry)
    plan.fwd_passes, plan.bwd_passes = count_passes(method, registry)
    # a backward pass costs about two forward ones
    flops = forward_flops(plan.backbone, registry) * (plan.fwd_passes + 2 * plan.bwd_passes)
    plan.epoch_seconds = TRAIN_IMAGES * flops / (tflops * 1e12) * EPOCH_OVERHEAD
    return plan


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(plan: Plan, data_flag: str, registry: Any, console: Console, device: str = "cuda") -> float:
    """Seconds per epoch of ``plan``'s real run on the device, from timing a few training steps."""
    from energyat_core.epoch_stats import EpochStats
    from energyat_core.run_config import compose
    from energyat_core.trainer import Trainer

    flags = {"backbone": plan.backbone, "dataset": data_flag, "device": device, "epochs": plan.full_epochs}
    cfg = compose(registry, method=plan.method, flags=flags)
    with tempfile.TemporaryDirectory(prefix="energyat-calibrate-") as tmp:
        trainer = Trainer(cfg, tmp, registry, console, quiet=True)
        dev = trainer.device
        stats = EpochStats.zeros(trainer.device)
        batches = (batch for epoch in range(10**6) for batch in trainer.loader.epoch(epoch))
        for _ in range(CALIBRATION_WARMUP):
            trainer.train_step(*next(batches), stats)
        sync(dev)
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            trainer.train_step(*next(batches), stats)
        sync(dev)
        seconds = (time.perf_counter() - start) / CALIBRATION_STEPS * len(trainer.loader) * EPOCH_OVERHEAD
        del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return seconds


def fit_epochs(plan: Plan, seconds_left: float, methods_left: int, eval_share: float) -> int:
    """Epochs of ``plan`` that fit in its share of ``seconds_left`` (at most the full schedule; 0: none)."""
    share = seconds_left / max(methods_left, 1) * (1 - eval_share)
    return max(0, min(plan.full_epochs, math.floor(share / max(plan.epoch_seconds, 1e-9))))


def plan_budget(plans: list[Plan], budget_seconds: float, eval_share: float) -> None:
    """Set every plan's epochs in turn, as the real run does, assuming each method uses what it was given."""
    left = budget_seconds
    for i, p in enumerate(plans):
        share = left / (len(plans) - i)
        p.epochs = fit_epochs(p, left, len(plans) - i, eval_share)
        left -= p.epochs * p.epoch_seconds + share * eval_share


def epochs_text(plan: Plan, ran: bool, device: bool = True) -> str:
    """``76 (full)``, ``12 of 76``, ``0 of 76 (budget too small)``; without a device ``not run (schedule: 76)``."""
    if not device:
        return f"not run (schedule: {plan.full_epochs})"
    if plan.epochs == plan.full_epochs:
        return f"{plan.epochs} (full)"
    return f"{plan.epochs} of {plan.full_epochs}" + ("" if ran or plan.epochs else " (budget too small)")


def markdown(plans: list[Plan], results: dict[str, dict[str, Any]], header: list[str], device: bool) -> str:
    """The table for docs/results.md; a method without results keeps its cells empty."""
    lines = [*header, ""]
    lines.append(
        "| method | backbone | epochs | clean % | PGD-50 CE % | PGD-50 CW % | AutoAttack % | worst case % "
        "| train min | eval min | paper |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        r = results.get(p.method, {})

        def cell(key: str, r: dict[str, Any] = r) -> str:
            value = r.get(key)
            return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

        lines.append(
            f"| {p.method} | {p.backbone} | {epochs_text(p, bool(r), device)} | {cell('clean_acc')} | "
            f"{cell('pgd50-ce')} | {cell('pgd50-cw')} | {cell('autoattack_acc')} | {cell('robust_acc')} | "
            f"{cell('train_min')} | {cell('eval_min')} | {p.reference} |"
        )
    return "\n".join(lines) + "\n"


def run_method(plan: Plan, data_flag: str, out_dir: Path, console: Console, device: str = "cuda") -> dict[str, Any]:
    """Train and evaluate ``plan`` through the energyat CLI; the figures of its eval.json and the minutes."""
    run_dir = out_dir / plan.method
    train = [sys.executable, "-m", "energyat_core", "train", "--method", plan.method, "--backbone", plan.backbone,
             "--dataset", data_flag, "--epochs", str(plan.epochs), "--device", device, "--out", str(run_dir),
             "--overwrite", "--quiet"]  # fmt: skip
    evaluate = [sys.executable, "-m", "energyat_core", "eval", str(run_dir), "--evaluator", "pgd:50",
                "--evaluator", "autoattack:standard"]  # fmt: skip
    minutes = {}
    for name, cmd in (("train_min", train), ("eval_min", evaluate)):
        console.print("$ " + " ".join(cmd[2:]).replace("energyat_core", "energyat", 1), markup=False)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        minutes[name] = round((time.perf_counter() - start) / 60, 1)
    result = json.loads((run_dir / "eval.json").read_text())
    return {**{k: result.get(k) for k in ("clean_acc", "autoattack_acc", "robust_acc")}, **result["attacks"], **minutes}


def plan_table(plans: list[Plan], budget_minutes: float, eval_share: float, tflops: float) -> str:
    """The dry-run plan as text."""
    lines = [
        f"plan for {budget_minutes:g} minutes ({eval_share:.0%} of each method's share kept for PGD-50 + AutoAttack "
        f"on the 10,000 test images); s/epoch estimated from counted FLOPs and passes at an assumed {tflops:g} "
        "effective TFLOP/s (a real run times 10 training steps on the device instead)",
        f"{'method':9s} {'backbone':16s} {'fwd/bwd per image':>18s} {'est. s/epoch':>13s}  epochs in budget",
    ]
    for p in plans:
        lines.append(
            f"{p.method:9s} {p.backbone:16s} {f'{round(p.fwd_passes, 1):g} / {round(p.bwd_passes, 1):g}':>18s} "
            f"{p.epoch_seconds:13.1f}  {epochs_text(p, ran=False)}"
        )
    return "\n".join(lines)


def main(args: Any, console: Console) -> int:
    """Plan, and unless it is a dry run or there is no CUDA, train and evaluate; write the table."""
    from energyat_core.registry import get_registry

    registry = get_registry()
    methods = args.methods or [m for m in PAPER_BACKBONES if m in registry.methods]
    budget = args.budget_minutes * 60
    if args.dry_run:
        plans = [estimate_plan(m, registry, args.plan_tflops) for m in methods]
        plan_budget(plans, budget, args.eval_share)
        console.print(plan_table(plans, args.budget_minutes, args.eval_share, args.plan_tflops), markup=False)
        return 0
    plans = [base_plan(m, registry) for m in methods]
    cuda = torch.cuda.is_available()
    command = f"`python bench/reproduce.py gpu --budget-minutes {args.budget_minutes:g}`"
    today = datetime.date.today().isoformat()
    if cuda:
        header = [f"Measured {today} on {torch.cuda.get_device_name()}, torch {torch.__version__}; {command}"]
    else:
        header = [f"Not measured: no CUDA device ({today}, torch {torch.__version__}); {command}"]
    results: dict[str, dict[str, Any]] = {}
    if not cuda:
        console.print(f"no CUDA device: the paper runs need a GPU; writing the table with empty cells to {args.out}")
    else:
        try:
            tarball = cifar_subset.find_tarball(args.data)
        except cifar_subset.DataMissing as err:
            console.print(f"skipped: {err}")
            return 2
        data_flag = f"imagefolder:{cifar_subset.extract_all(tarball, Path(args.cache))}"
        start = time.perf_counter()
        for i, p in enumerate(plans):
            p.epoch_seconds = calibrate(p, data_flag, registry, console)
            left = budget - (time.perf_counter() - start)
            p.epochs = fit_epochs(p, left, len(plans) - i, args.eval_share)
            console.print(f"{p.method}: {p.epoch_seconds:.0f} s/epoch on {p.backbone}; {epochs_text(p, ran=False)}")
            if p.epochs:
                results[p.method] = run_method(p, data_flag, Path(args.cache) / "gpu-runs", console)
    table = markdown(plans, results, header, cuda)
    console.print(table, markup=False, highlight=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    console.print(f"wrote {args.out}")
    return 0
