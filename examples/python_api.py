"""energyat from Python, end to end: train a small PGD-AT model, load it, attack it, evaluate it.

    python examples/python_api.py                 # tiny synthetic run on the CPU, seconds
    python examples/python_api.py --epochs 10 --n-train 5000

docs/python.md explains each call.
"""

from __future__ import annotations

import argparse

import torch

import energyat_core as ea


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/python-example", help="run directory (replaced if it exists)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=256, help="synthetic training images")
    args = parser.parse_args()

    # 1. train: settings as keywords, parts as names or tables, --set items as sets=[...]
    run = ea.train(
        attack="pgd",
        backbone="small_cnn",
        dataset={"name": "synthetic", "n_train": args.n_train, "n_test": 128},
        epochs=args.epochs,
        batch_size=64,
        eval_n=128,
        eval_steps=2,
        device="cpu",
        out=args.out,
        overwrite=True,
        sets=["attack.steps=3"],
    )
    last = run.metrics[-1]
    print(f"trained {run.dir}: clean {100 * last['clean_acc']:.1f}%, PGD {100 * last['robust_acc']:.1f}%")

    # 2. load: a plain module on [0, 1] images
    model = ea.load(run.dir)
    from energyat_core.api import load_run

    data = load_run(run.dir).data
    x, y = data.test_x[:128].float() / 255, data.test_y[:128]

    # 3. attack: any registered attack, bound to the model
    fgsm = ea.attack("fgsm", model, eps=8 / 255)
    x_adv = fgsm(x, y)
    print(f"FGSM moved the images by at most {255 * (x_adv - x).abs().max().item():.1f}/255")

    # 4. evaluate: evaluators and attacks, the per-point worst case, eval.json's fields
    report = ea.evaluate(model, (x, y), evaluators=["pgd:5"], attacks=["fgsm"])
    print(f"clean {report['clean_acc']:.1f}%, worst case {report['robust_acc']:.1f}%: {report['attacks']}")
    assert report["robust_acc"] <= report["clean_acc"]
    assert torch.isfinite(model(x)).all()


if __name__ == "__main__":
    main()
