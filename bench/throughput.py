"""Throughput of the energyat engine against a plain reference loop, in one process and one run.

The reference loop is written the way the papers' code is: fp32, a torch DataLoader with
torchvision transforms on CPU workers, batch 128, the attack as a Python loop around
``torch.autograd.grad``. The engine runs the same method through
:class:`energyat_core.trainer.Trainer`: data held on the device, batched GPU augmentation,
bf16 autocast and channels_last on CUDA, optionally torch.compile. Both train the same
backbone on the same images; only the way they are fed and computed differs.

    python bench/throughput.py --device cpu                   # tiny CPU run (small_cnn, synthetic)
    python bench/throughput.py --device cuda --dataset imagefolder:PATH/cifar10 \\
        --backbone preact_resnet18 --batch-size 512 --steps 60 --compile

Prints a table of img/s and the speed-up per method, and writes the figures as JSON
(``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
from rich.console import Console
from torchvision import transforms

from energyat_core.components import Backbone
from energyat_core.epoch_stats import EpochStats
from energyat_core.models import Classifier
from energyat_core.registry import get_registry
from energyat_core.run_config import compose
from energyat_core.trainer import Trainer

METHODS = ("pgd-at", "trades", "fgsm-rs")
EPS, ALPHA = 8 / 255, 2 / 255


# -- the reference loop -------------------------------------------------------------------
class ReferenceData(torch.utils.data.Dataset):
    """uint8 images served one by one through torchvision transforms, as in the papers' code."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, what ToTensor expects
        self.labels = labels
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_pgd(model, x, y, steps: int, alpha: float, kl: bool) -> torch.Tensor:
    if kl:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = x + 0.001 * torch.randn_like(x)
    else:
        x_adv = x + torch.empty_like(x).uniform_(-EPS, EPS)
    x_adv = x_adv.clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if kl:
            loss = F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")
        else:
            loss = F.cross_entropy(logits, y)
        grad = torch.autograd.grad(loss, x_adv)[0]
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv.detach()


def reference_step(method: str) -> Callable:
    def step(model, opt, x, y):
        model.eval()
        if method == "pgd-at":
            x_adv = reference_pgd(model, x, y, 10, ALPHA, kl=False)
        elif method == "fgsm-rs":
            x_adv = reference_pgd(model, x, y, 1, 1.25 * EPS, kl=False)
        else:
            x_adv = reference_pgd(model, x, y, 10, ALPHA, kl=True)
        model.train()
        if method == "trades":
            logits = model(x)
            loss = F.cross_entropy(logits, y) + 6.0 * F.kl_div(
                F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
            )
        else:
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def endless(loader) -> Iterator:
    while True:
        yield from loader


def time_steps(run_step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step, after ``warmup`` untimed steps."""
    for _ in range(warmup):
        run_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


# -- one comparison ---------------------------------------------------------------------------
def bench_method(method: str, args, registry, console: Console) -> dict:
    flags = {
        "backbone": args.backbone,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "device": args.device,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "precision": args.precision,
        "epochs": 1,
        "eval_n": 16,
        "seed": 0,
    }
    sets = [f"dataset.{kv}" for kv in args.dataset_set]
    cfg = compose(registry, method=method, flags=flags, sets=sets)
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="energyat-bench-"), registry, console, quiet=True)
    device = trainer.device

    # (a) reference: a fresh model of the same backbone, fp32, DataLoader, batch 128
    torch.manual_seed(0)
    backbone = cast(Backbone, registry.create_part("backbone", cfg.parts["backbone"]))
    net = backbone.build(trainer.data.num_classes)
    ref_model = Classifier(net, trainer.data.mean, trainer.data.std).to(device)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        ReferenceData(trainer.data.train_x, trainer.data.train_y),
        batch_size=args.ref_batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    batches = endless(loader)
    ref = reference_step(method)

    def ref_step():
        x, y = next(batches)
        ref(ref_model, ref_opt, x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    ref_s = time_steps(ref_step, args.steps, args.warmup, device)

    # (b) the energyat engine, same method through its components
    stats = EpochStats.zeros(device)
    engine_batches = (b for epoch in range(10**6) for b in trainer.loader.epoch(epoch))

    def engine_step():
        x, y = next(engine_batches)
        trainer.train_step(x, y, stats)

    eng_s = time_steps(engine_step, args.steps, args.warmup, device)
    ref_ips = args.ref_batch_size / ref_s
    eng_ips = (cfg.batch_size) / eng_s
    row = {
        "method": method,
        "reference_img_per_s": round(ref_ips, 1),
        "engine_img_per_s": round(eng_ips, 1),
        "speedup": round(eng_ips / ref_ips, 2),
        "engine_batch": cfg.batch_size,
        "reference_batch": args.ref_batch_size,
        "engine_precision": trainer.precision,
        "compile": cfg.compile,
    }
    if device.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--backbone", default=None, help="default: preact_resnet18 on CUDA, small_cnn on CPU")
    ap.add_argument("--dataset", default="synthetic", help="synthetic or imagefolder:PATH (e.g. the CIFAR-10 copy)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset-set", action="append", default=[], help="dataset option, e.g. n_train=2048")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-size", type=int, default=None, help="engine batch (default 512 on CUDA, 128 on CPU)")
    ap.add_argument("--ref-batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default 4 CUDA, 0 CPU)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 50 CUDA, 5 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.backbone = args.backbone or ("preact_resnet18" if cuda else "small_cnn")
    args.batch_size = args.batch_size or (512 if cuda else 128)
    args.workers = args.workers if args.workers is not None else (4 if cuda else 0)
    args.steps = args.steps or (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if args.dataset == "synthetic" and not args.dataset_set:
        args.dataset_set = ["n_train=2048", "n_test=64"]

    console = Console()
    registry = get_registry()
    rows = [bench_method(m, args, registry, console) for m in args.methods.split(",")]
    from energyat_core.progress import table

    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    console.print(
        table(
            f"img/s on {device_name}, torch {torch.__version__}, {args.backbone}, {args.dataset}",
            ["method", "reference (fp32, DataLoader)", "energyat", "speed-up"],
            [
                (
                    r["method"],
                    f"{r['reference_img_per_s']:,.0f}",
                    f"{r['engine_img_per_s']:,.0f}",
                    f"{r['speedup']:.2f}x",
                )
                for r in rows
            ],
        )
    )
    result = {"device": device_name, "torch": torch.__version__, "args": vars(args), "results": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
