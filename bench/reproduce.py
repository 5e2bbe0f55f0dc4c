"""Reproduce the presets on real CIFAR-10 images: a CPU cross-check and the GPU paper runs.

    python bench/reproduce.py cpu                       # energyat vs a plain loop, ~10 min on 2 idle cores
    python bench/reproduce.py gpu --budget-minutes 600  # each preset's paper recipe, PGD-50 + AutoAttack
    python bench/reproduce.py gpu --budget-minutes 600 --dry-run   # the plan only (works on a CPU)

``cpu`` trains fgsm-rs, pgd-at and trades on a class-balanced 10,000-image subset of the
CIFAR-10 JPEG copy (``../shared/data/cifar10-jpeg.tar.gz`` from the repository root, or
``--data``) with the small CNN, twice each (seeds 0 and 1): once with energyat's presets and
once with the plain PyTorch loop of ``bench/plain_at.py``, which follows the authors'
released code and shares only the network class with energyat. One evaluation function
scores every model on the same held-out test images (clean and PGD-10, eps 8/255). It prints
a table, writes JSON (``--out``) and exits 1 when for some method the seed-mean clean or
PGD accuracies of the two differ by more than ``--tolerance`` points (3), or a model did not
learn; 2 when the data is missing.

``gpu`` runs each preset's recipe on the paper's backbone on full CIFAR-10 through the
``energyat`` CLI, as many epochs of the schedule as the budget allows (the table says how
many), evaluates with ``energyat eval RUN --evaluator pgd:50 --evaluator autoattack:standard``
on the whole test split, and writes a markdown table. Without CUDA it says so and writes
the table with empty cells.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import cifar_subset
import torch
from rich.console import Console

CPU_METHODS = ("fgsm-rs", "pgd-at", "trades")
EXIT_DISAGREE, EXIT_NO_DATA = 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of both modes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("cpu", "gpu"):
        p = sub.add_parser(name, help=f"the {name} check")
        p.add_argument("--data", default=None, help="the CIFAR-10 JPEG tarball (default ../shared/data/...)")
        p.add_argument(
            "--cache",
            default=str(cifar_subset.DEFAULT_CACHE),
            help="where the data and the runs go (default runs/reproduce/, ignored by git)",
        )
        p.add_argument("--methods", default=None, help="comma-separated presets")
    cpu = sub.choices["cpu"]
    cpu.add_argument("--epochs", type=int, default=5, help="epochs of every run (default 5)")
    cpu.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    cpu.add_argument("--n-train", type=int, default=10_000, help="class-balanced training images (default 10,000)")
    cpu.add_argument("--n-test", type=int, default=2_000, help="class-balanced test images evaluated (default 2,000)")
    cpu.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the evaluation (default 10)")
    cpu.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation's random starts")
    cpu.add_argument("--batch-size", type=int, default=128, help="batch of the plain loop (the presets' 128)")
    cpu.add_argument("--workers", type=int, default=2, help="runs at a time, each in its own process (default 2)")
    cpu.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    cpu.add_argument("--tolerance", type=float, default=3.0, help="largest allowed gap of seed means, in points")
    cpu.add_argument("--min-clean", type=float, default=20.0, help="a model below this clean accuracy failed")
    cpu.add_argument("--out", default=str(cifar_subset.DEFAULT_CACHE / "cpu.json"), help="JSON results")
    gpu = sub.choices["gpu"]
    gpu.add_argument("--budget-minutes", type=float, required=True, help="wall-clock budget of all runs")
    gpu.add_argument("--dry-run", action="store_true", help="print the plan and stop (no training; works on CPU)")
    gpu.add_argument("--eval-share", type=float, default=0.5, help="part of each method's budget kept for eval")
    gpu.add_argument("--plan-tflops", type=float, default=80.0, help="dry run: assumed effective TFLOP/s")
    gpu.add_argument("--out", default=str(cifar_subset.DEFAULT_CACHE / "gpu.md"), help="the markdown table")
    args = ap.parse_args(argv)
    if args.mode == "cpu":
        args.methods = args.methods.split(",") if args.methods else list(CPU_METHODS)
        args.seeds = [int(s) for s in args.seeds.split(",")]
    elif args.methods:
        args.methods = args.methods.split(",")
    return args


def machine() -> str:
    """The CPU and thread count this ran on, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def cpu_mode(args: argparse.Namespace, console: Console) -> int:
    """The CPU cross-check; its exit status."""
    import cpu_check

    unknown = [m for m in args.methods if m not in cpu_check.plain_at.RECIPES]
    if unknown:
        console.print(f"error: the plain loop has no recipe for {', '.join(unknown)} (it has fgsm-rs, pgd-at, trades)")
        return EXIT_DISAGREE
    try:
        tarball = cifar_subset.find_tarball(args.data)
    except cifar_subset.DataMissing as err:
        console.print(f"skipped: {err}")
        return EXIT_NO_DATA
    start = time.perf_counter()
    folder = cifar_subset.balanced_folder(tarball, Path(args.cache), args.n_train, args.n_test)
    cifar_subset.load_arrays(folder)  # decoded once here, read from the cache by the workers
    console.print(
        f"{args.n_train:,} training and {args.n_test:,} test images (class-balanced) from {tarball.name}; "
        f"small_cnn, {args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}; {args.workers} runs at a "
        f"time with {args.threads} torch thread(s) each; {machine()}"
    )
    prep = time.perf_counter() - start
    result = cpu_check.run(args, folder, console)
    rows = result["rows"]
    wall = time.perf_counter() - start
    workers_start = sum({r["init_cpu"] for r in rows})  # one value per worker process
    cpu_minutes = (time.process_time() + workers_start + sum(r["cpu_seconds"] for r in rows)) / 60
    idle = (prep + cpu_check.idle_makespan(rows, args.workers)) / 60
    title = f"CIFAR-10 subset, eps 8/255, clean and PGD-{args.eval_steps} on {args.n_test:,} test images"
    Console(width=max(console.width, 130)).print(cpu_check.results_table(rows, title))  # no wrapped cells
    for method, rec in result["recipes"].items():
        for line in rec["differences"]:
            console.print(f"recipe difference, {method}: {line}")
    problems = cpu_check.disagreements(rows, args.tolerance) + cpu_check.not_learning(rows, args.min_clean)
    markdown = cpu_check.markdown_table(rows, args.eval_steps)
    console.print(markdown, markup=False, highlight=False)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", "bench/reproduce.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("cache", "data")},
        "wall_seconds": round(wall, 1),
        "cpu_minutes_of_the_runs": round(cpu_minutes, 1),
        "idle_machine_minutes": round(idle, 1),
        "load_average_at_end": os.getloadavg(),
        "means": {f"{m}/{i}": v for (m, i), v in cpu_check.seed_means(rows).items()},
        "problems": problems,
        "passed": not problems,
        "markdown": markdown,
        **result,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"wall time {wall / 60:.1f} min (load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); "
        f"CPU time {cpu_minutes:.1f} min; on {args.workers} idle cores the runs' CPU times add up to {idle:.1f} min"
        + (f"; wrote {args.out}" if args.out else "")
    )
    for line in problems:
        console.print(f"FAILED: {line}")
    if not problems:
        console.print(f"passed: every seed-mean accuracy agrees within {args.tolerance:g} points")
    return EXIT_DISAGREE if problems else 0


def gpu_mode(args: argparse.Namespace, console: Console) -> int:
    """The GPU paper runs (or their plan); its exit status."""
    import paper_runs

    return paper_runs.main(args, console)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mode; the exit status."""
    args = parse_args(argv)
    console = Console(soft_wrap=True)  # one message, one line (tables keep their width)
    return cpu_mode(args, console) if args.mode == "cpu" else gpu_mode(args, console)


if __name__ == "__main__":
    raise SystemExit(main())
