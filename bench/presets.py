"""Train every installed method preset in one small setting and tabulate clean / PGD accuracy.

    python bench/presets.py                       # all presets, the CPU setting of the tests
    python bench/presets.py --methods pgd-at,weat --epochs 8 --out runs/presets

Each preset runs with its own attack, loss and weighter, but with one shared short
training setting (``energyat_core.testing.QUICK_ARGS``: small_cnn on 2,000 synthetic
images, 4 epochs, cosine lr 0.05, batch 128, CPU), then ``energyat eval`` measures clean
and PGD accuracy (worst case over PGD-CE and PGD-CW) on the test split. The first row is
standard training (``--attack none``) for comparison. The table printed at the end is
markdown, for docs/results.md; the numbers are what this run measured, nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from energyat_core.registry import get_registry
from energyat_core.testing import QUICK_ARGS, read_metrics, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="comma-separated presets (default: every installed one)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--eval-steps", type=int, default=10, help="PGD steps of the final evaluation (default 10)")
    parser.add_argument("--n", type=int, default=500, help="test images evaluated (default 500)")
    parser.add_argument("--out", default="runs/presets", help="directory for the runs (default runs/presets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    methods = args.methods.split(",") if args.methods else sorted(get_registry().methods)
    runs: list[tuple[str, list[str]]] = [("standard", ["--attack", "none", "--loss", "ce", "--weighter", "uniform"])]
    runs += [(m, ["--method", m]) for m in methods]
    rows = []
    for name, flags in runs:
        run_dir = Path(args.out) / name
        train = ["train", *QUICK_ARGS, *flags, "--epochs", str(args.epochs), "--seed", str(args.seed)]
        start = time.perf_counter()
        code = run_cli(*train, "--out", run_dir, "--overwrite", "--quiet")
        seconds = time.perf_counter() - start
        if code != 0:
            print(f"{name}: training failed (exit {code})", file=sys.stderr)
            return code
        last = read_metrics(run_dir)[-1]
        steps = f"evaluator.pgd.steps={args.eval_steps}"
        code = run_cli("eval", run_dir, "--n", args.n, "--set", steps, "--no-sanity")
        if code != 0:
            print(f"{name}: evaluation failed (exit {code})", file=sys.stderr)
            return code
        result = json.loads((run_dir / "eval.json").read_text())
        rows.append(
            (
                name,
                f"{result['clean_acc']:.1f}",
                f"{result['robust_acc']:.1f}",
                f"{last['fwd_per_sample']:.0f} / {last['bwd_per_sample']:.0f}",
                f"{seconds:.0f}",
            )
        )
    print(
        f"\n| method | clean % | PGD-{args.eval_steps} % (CE and CW, worst case) | fwd / bwd passes per sample "
        "| train wall s |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
