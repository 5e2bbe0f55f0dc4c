"""``reproduce.py cpu``: energyat and the plain loop of :mod:`plain_at`, side by side on real images.

For each method and seed, energyat trains the preset through its Python API
(:func:`energyat_core.run_config.compose` and :class:`energyat_core.trainer.Trainer`, on the
balanced subset folder of :mod:`cifar_subset`) and the plain loop trains the same network
class with the recipe of the released code (:data:`plain_at.RECIPES`). Both models are then
scored by one function, :func:`plain_at.evaluate`, on the same held-out images. The check
fails when, for some method, the seed means of energyat and of the plain loop differ by more
than the tolerance (clean or PGD accuracy).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import plain_at
from rich.console import Console
from rich.table import Table

from energyat_core.models.small_cnn import SmallConvNet

IMPLS = ("energyat", "plain")


# -- the two implementations -------------------------------------------------------------
def train_energyat(method: str, folder: Path, run_dir: Path, epochs: int, seed: int, registry: Any, console: Console):
    """Train ``method``'s preset with energyat on the subset folder; (model, seconds per epoch, engine recipe)."""
    from energyat_core.run_config import compose
    from energyat_core.trainer import Trainer

    flags = {
        "backbone": "small_cnn",
        "dataset": f"imagefolder:{folder}",
        "device": "cpu",
        "epochs": epochs,
        "seed": seed,
        "eval_n": 128,  # the engine's own per-epoch check; the reported figures come from plain_at.evaluate
        "eps": 8 / 255,
    }
    cfg = compose(registry, method=method, flags=flags, sets=["dataset.workers=1"])  # decode in this process
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(cfg, run_dir, registry, console, quiet=True)
    history = trainer.fit()
    return trainer.model, [h["epoch_seconds"] for h in history], engine_recipe(trainer)


def engine_recipe(trainer: Any) -> dict[str, Any]:
    """The settings of an energyat run that :func:`plain_recipe` names, read from its resolved parts."""
    cfg = trainer.cfg
    attack = trainer.components["attack"]
    kwargs = attack.config.pgd_kwargs(attack.threat) if hasattr(attack.config, "pgd_kwargs") else {}
    if cfg.schedule == "multistep" and cfg.gamma == 0.1:
        schedule = f"x0.1 at {', '.join(f'{m:.3g}' for m in cfg.milestones)}"
    elif cfg.schedule == "cyclic":
        schedule = f"cyclic, peak at {cfg.warmup:.3g}"
    else:
        schedule = f"{cfg.schedule} (warmup {cfg.warmup:.3g})"
    return {
        "attack": f"{kwargs.get('objective', '?')}, {kwargs.get('random_start', '?')} start",
        "steps": kwargs.get("steps"),
        "step x 255": round(255 * kwargs["alpha"], 3) if "alpha" in kwargs else None,
        "attack_bn": cfg.attack_bn,
        "lr": cfg.lr,
        "momentum": momentum_text(cfg.momentum, tuple(getattr(cfg, "momentum_cycle", ()) or ())),
        "weight_decay": cfg.weight_decay,
        "schedule": schedule,
        "input normalisation": "per-channel mean/std" if cfg.normalize == "dataset" else cfg.normalize,
        "beta": getattr(trainer.components["loss"].config, "beta", None),
        "early_stop": getattr(cfg, "early_stop", False),
        "batch_size": cfg.batch_size,
    }


def plain_recipe(r: plain_at.Recipe, eps: float, batch_size: int) -> dict[str, Any]:
    """The settings of a plain-loop recipe, in :func:`engine_recipe`'s terms."""
    if r.schedule == "cyclic":
        schedule = "cyclic, peak at 0.5"
    else:
        schedule = f"x0.1 at {', '.join(f'{m:.3g}' for m in r.milestones)}"
    return {
        "attack": "kl, normal start" if r.attack == "trades" else "ce, uniform start",
        "steps": r.steps,
        "step x 255": round(255 * r.step_ratio * eps, 3),
        "attack_bn": r.attack_bn,
        "lr": r.lr,
        # torch's CyclicLR (train_fgsm.py) cycles the momentum from max_momentum 0.9 to base_momentum 0.8 by default
        "momentum": momentum_text(r.momentum, (0.8, 0.9) if r.schedule == "cyclic" else ()),
        "weight_decay": r.weight_decay,
        "schedule": schedule,
        "input normalisation": "per-channel mean/std" if r.normalise else "none",
        "beta": r.beta or None,
        "early_stop": False,  # train_fgsm.py's --early-stop is off unless given
        "batch_size": batch_size,
    }


def momentum_text(momentum: float, cycle: tuple[float, ...]) -> str:
    """``0.9``, or ``cycled 0.8-0.9`` when the momentum follows the lr cycle inversely."""
    return f"cycled {cycle[0]:g}-{cycle[1]:g}" if cycle else f"{momentum:g}"


def recipe_differences(engine: dict[str, Any], plain: dict[str, Any]) -> list[str]:
    """``setting: energyat X, plain Y`` for every setting in which the two recipes differ."""
    return [f"{k}: energyat {engine.get(k)}, plain {v}" for k, v in plain.items() if engine.get(k) != v]


# -- the comparison -------------------------------------------------------------------------
def seed_means(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Seed-mean clean and PGD accuracy and seconds per epoch, by (method, impl)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["impl"]), []).append(row)
    return {
        key: {
            "clean": statistics.fmean(r["clean"] for r in group),
            "pgd": statistics.fmean(r["pgd"] for r in group),
            "s_per_epoch": statistics.fmean(statistics.fmean(r["epoch_seconds"]) for r in group),
            "cpu_s": statistics.fmean(r.get("cpu_seconds", float("nan")) for r in group),
            "seeds": len(group),
        }
        for key, group in groups.items()
    }


def disagreements(rows: list[dict[str, Any]], tolerance: float) -> list[str]:
    """One line per method and metric whose seed means differ by more than ``tolerance`` points.

    A method that lacks either implementation's rows is reported too (nothing to compare).
    """
    means = seed_means(rows)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        if any((method, impl) not in means for impl in IMPLS):
            out.append(f"{method}: results of {' and '.join(IMPLS)} are both needed")
            continue
        eng, plain = means[(method, "energyat")], means[(method, "plain")]
        for metric in ("clean", "pgd"):
            gap = eng[metric] - plain[metric]
            if abs(gap) > tolerance:
                out.append(
                    f"{method}: {metric} accuracy energyat {eng[metric]:.1f}% vs plain {plain[metric]:.1f}% "
                    f"(difference {gap:+.1f} points > {tolerance:g})"
                )
    return out


def not_learning(rows: list[dict[str, Any]], min_clean: float) -> list[str]:
    """One line per (method, impl) whose seed-mean clean accuracy is below ``min_clean`` (it did not learn)."""
    return [
        f"{m} ({impl}): clean accuracy {v['clean']:.1f}% < {min_clean:g}%: the model did not learn"
        for (m, impl), v in seed_means(rows).items()
        if v["clean"] < min_clean
    ]


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """method | impl | seed-mean clean | seed-mean PGD | s/epoch | CPU s per run | per-seed clean | per-seed PGD."""
    t = Table(title=title, title_justify="left")
    columns = ("method", "impl", "clean % (mean)", "PGD % (mean)", "s/epoch", "CPU s/run", "clean % per seed",
               "PGD % per seed")  # fmt: skip
    for col in columns:
        t.add_column(col)
    for (method, impl), v in seed_means(rows).items():
        mine = [r for r in rows if r["method"] == method and r["impl"] == impl]
        t.add_row(
            method, impl, f"{v['clean']:.1f}", f"{v['pgd']:.1f}", f"{v['s_per_epoch']:.1f}", f"{v['cpu_s']:.0f}",
            " / ".join(f"{r['clean']:.1f}" for r in mine), " / ".join(f"{r['pgd']:.1f}" for r in mine),
        )  # fmt: skip
    return t


def markdown_table(rows: list[dict[str, Any]], eval_steps: int) -> str:
    """The results as a markdown table, for docs/results.md."""
    lines = [
        f"| method | impl | clean % (seed mean) | PGD-{eval_steps} % (seed mean) | s/epoch | CPU s per run "
        "(train + eval) | clean % per seed "
        f"| PGD-{eval_steps} % per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, impl), v in seed_means(rows).items():
        mine = [r for r in rows if r["method"] == method and r["impl"] == impl]
        lines.append(
            f"| {method} | {impl} | {v['clean']:.1f} | {v['pgd']:.1f} | {v['s_per_epoch']:.1f} | {v['cpu_s']:.0f} | "
            + " / ".join(f"{r['clean']:.1f}" for r in mine)
            + " | "
            + " / ".join(f"{r['pgd']:.1f}" for r in mine)
            + " |"
        )
    return "\n".join(lines)


# -- the whole check --------------------------------------------------------------------------
#: relative cost of one run of each method (passes per image), to start the longest runs first
COST = {"trades": 13, "pgd-at": 11, "fgsm-rs": 2}
_WORKER: dict[str, Any] = {}


def _init_worker(folder: str, threads: int) -> None:
    """A worker process: ``threads`` torch threads, the decoded arrays and the registry loaded once."""
    import cifar_subset
    import torch

    from energyat_core.registry import get_registry

    torch.set_num_threads(threads)
    _WORKER.update(folder=Path(folder), arrays=cifar_subset.load_arrays(Path(folder)), registry=get_registry())
    _WORKER["init_cpu"] = time.process_time()  # the worker's start: imports, arrays, registry


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed, impl) and evaluate it with :func:`plain_at.evaluate`; its row."""
    method, seed, impl = task["method"], task["seed"], task["impl"]
    arrays, eps = _WORKER["arrays"], 8 / 255
    start, cpu_start = time.perf_counter(), time.process_time()
    engine = None
    if impl == "energyat":
        run_dir = Path(task["cache"]) / "cpu-runs" / f"{method}-seed{seed}"
        model, seconds, engine = train_energyat(
            method, _WORKER["folder"], run_dir, task["epochs"], seed, _WORKER["registry"], Console(quiet=True)
        )
    else:
        model, seconds = plain_at.train(
            lambda: SmallConvNet(10), plain_at.RECIPES[method], arrays["train_x"], arrays["train_y"],
            epochs=task["epochs"], seed=seed, eps=eps, batch_size=task["batch_size"],
        )  # fmt: skip
    clean, robust = plain_at.evaluate(
        model, arrays["test_x"], arrays["test_y"], eps=eps, steps=task["eval_steps"], seed=task["eval_seed"]
    )
    return {**task, "clean": clean, "pgd": robust, "epoch_seconds": seconds,
            "seconds_total": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "init_cpu": _WORKER["init_cpu"], "engine_recipe": engine}  # fmt: skip


def run_order(task: dict[str, Any]) -> int:
    """Sort key of the runs: the costliest first (:data:`COST`), so that the two workers end together."""
    return -COST.get(task["method"], 10)


def idle_makespan(rows: list[dict[str, Any]], workers: int) -> float:
    """Seconds the runs would take on ``workers`` idle cores: their CPU times, handed out in the pool's order.

    Each run is single-threaded, so its CPU time is what it needs of one core; a run goes
    to the worker that frees first, in the order the pool hands them out, after the workers'
    own start (imports, arrays).
    """
    free = [max(row["init_cpu"] for row in rows)] * workers
    for row in sorted(rows, key=lambda r: r["order"]):
        i = free.index(min(free))
        free[i] += row["cpu_seconds"]
    return max(free)


def run(args: Any, folder: Path, console: Console) -> dict[str, Any]:
    """Train every (method, seed) with both implementations in ``args.workers`` processes; the results.

    Each process uses ``args.threads`` torch threads (1: on two cores, two single-threaded
    runs at a time use the machine better than one run with two threads); the costliest
    runs start first.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    common = {k: getattr(args, k) for k in ("epochs", "batch_size", "eval_steps", "eval_seed", "cache")}
    tasks = [
        {"method": m, "seed": s, "impl": impl, **common} for m in args.methods for s in args.seeds for impl in IMPLS
    ]
    tasks.sort(key=run_order)
    for i, task in enumerate(tasks):
        task["order"] = i  # the order the pool hands the runs out in
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, ctx, initializer=_init_worker, initargs=(str(folder), args.threads)) as pool:
        for future in as_completed([pool.submit(run_one, task) for task in tasks]):
            row = future.result()
            console.print(
                f"{row['method']:8s} {row['impl']:8s} seed {row['seed']}: clean {row['clean']:5.1f}%  "
                f"PGD-{args.eval_steps} {row['pgd']:5.1f}%  {statistics.fmean(row['epoch_seconds']):5.1f} s/epoch  "
                f"({row['seconds_total']:.0f} s with evaluation)"
            )
            rows.append(row)
    rows.sort(key=lambda r: (args.methods.index(r["method"]), IMPLS.index(r["impl"]), args.seeds.index(r["seed"])))
    recipes = {}
    for method in args.methods:
        engine = next(r["engine_recipe"] for r in rows if r["method"] == method and r["impl"] == "energyat")
        plain = plain_recipe(plain_at.RECIPES[method], 8 / 255, args.batch_size)
        recipes[method] = {"energyat": engine, "plain": plain, "differences": recipe_differences(engine, plain)}
    for row in rows:
        del row["engine_recipe"]
    return {"rows": rows, "recipes": recipes}
