"""``energyat eval``: clean and robust accuracy of a run or of any safetensors state dict."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console

from energyat_core import library
from energyat_core.cli.flags import at_least
from energyat_core.errors import ConfigError
from energyat_core.models.normalization import HELP as NORMALIZE_HELP
from energyat_core.options import parse_number
from energyat_core.precision import resolve_device
from energyat_core.progress import table, task_progress
from energyat_core.registry import get_registry
from energyat_core.run_config import parse_sets
from energyat_core.sanity import print_warnings, sanity_checks
from energyat_core.saved_run import load_run, load_weights_file
from energyat_core.threat import DEFAULT_EPS


def add_commands(app: typer.Typer) -> None:
    app.command("eval")(evaluate)


def evaluate(
    run_dir: Path = typer.Argument(None, help="Run directory written by `energyat train` (needs no other flag)."),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="A plain state dict (.safetensors) to evaluate instead of a run; needs --backbone and --dataset.",
    ),
    backbone: str = typer.Option(
        None, "--backbone", help="Architecture of --weights, e.g. preact_resnet18 or timm:resnet18."
    ),
    normalize: str = typer.Option(
        None,
        "--normalize",
        help="With --weights: the "
        + NORMALIZE_HELP
        + " (default: what the file records, as a file written by energyat does, else the dataset's).",
    ),
    dataset: str = typer.Option(None, "--dataset", help="Dataset to evaluate on (default: the run's)."),
    data_dir: str = typer.Option(None, "--data-dir", help="Where the dataset is read from."),
    checkpoint: str = typer.Option("model", "--checkpoint", help="model (last epoch) or best (best PGD epoch)."),
    n: int = typer.Option(
        0,
        "--n",
        help="Number of test images, the first N (0, the default: the whole test split, as papers and "
        "RobustBench report); >= 0.",
        callback=at_least(0, "--n", 0),
    ),
    batch_size: int = typer.Option(
        256, "--batch-size", help="Evaluation batch size; >= 1.", callback=at_least(1, "--batch-size", 256)
    ),
    eps: str = typer.Option(
        None,
        "--eps",
        help="Threat radius, e.g. 8/255 (default: the run's, which it was trained at; with another --norm, "
        "8/255 for linf and 0.5 for l2).",
    ),
    norm: str = typer.Option(None, "--norm", help="linf or l2 (default: the run's)."),
    attack: list[str] = typer.Option(
        None,
        "--attack",
        metavar="NAME[:VALUE]",
        help="Any attack as an evaluator (repeatable): a point counts as robust only if it survives it; options with "
        "--set attack.OPTION=VALUE or attack.NAME.OPTION=VALUE, e.g. --attack pgd --set attack.steps=50. "
        "`energyat describe attack` lists them.",
    ),
    evaluator: list[str] = typer.Option(
        None,
        "--evaluator",
        metavar="NAME[:VALUE]",
        help="Evaluators to run (repeatable; default pgd when no --attack is given); the text after ':' sets the "
        "evaluator's first option. "
        "`energyat describe evaluator` lists them.",
    ),
    set_: list[str] = typer.Option(
        None,
        "--set",
        metavar="KIND.[NAME.]OPTION=VALUE",
        help="Option of the evaluators (evaluator.OPTION=VALUE: every evaluator that has it; "
        "evaluator.NAME.OPTION=VALUE: that one) or of the --attack attacks (attack.OPTION=VALUE, "
        "attack.NAME.OPTION=VALUE), e.g. "
        "--set evaluator.pgd.steps=50.",
    ),
    sanity: bool = typer.Option(
        True,
        "--sanity/--no-sanity",
        help="Check the model first (randomised outputs, probabilities instead of logits, zero gradients).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (default, most reliable), bf16 or fp16."),
    out: Path = typer.Option(None, "--out", help="Where eval.json goes (default: RUN_DIR/eval.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attacks' random starts."),
) -> None:
    """Evaluate clean accuracy and the per-point worst case over PGD-CE, PGD-CW and any other evaluators."""
    registry = get_registry()
    console = Console()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    if weights is not None:
        if backbone is None or dataset is None:
            raise ConfigError(
                "--weights needs --backbone and --dataset", "e.g. --backbone timm:resnet18 --dataset cifar10"
            )
        run = load_weights_file(
            weights,
            backbone=backbone,
            dataset=dataset,
            data_dir=data_dir,
            device=dev,
            registry=registry,
            normalize=normalize,
        )
        default_out = Path(weights).with_suffix(".eval.json")
    elif run_dir is not None:
        if normalize is not None:
            raise ConfigError(
                "--normalize applies to --weights: a run directory records the normalisation it was trained with",
                "drop --normalize, or evaluate the run's model.safetensors with --weights --backbone --dataset",
            )
        run = load_run(run_dir, which=checkpoint, device=dev, registry=registry, dataset=dataset, data_dir=data_dir)
        default_out = Path(run_dir) / "eval.json"
    else:
        raise ConfigError("nothing to evaluate", "give a RUN_DIR, or --weights FILE --backbone NAME --dataset NAME")
    cfg = run.cfg
    norm_value = norm or cfg.norm
    if norm_value not in ("linf", "l2"):
        raise ConfigError(f"unknown --norm '{norm_value}'", "use linf or l2")
    if eps is not None:
        eps_value = _eps(eps, norm_value)
    else:
        eps_value = cfg.threat.eps if norm_value == cfg.norm else DEFAULT_EPS[norm_value]

    count = len(run.data.test_y) if n == 0 else min(n, len(run.data.test_y))
    x = (run.data.test_x[:count].float() / 255).to(dev)
    y = run.data.test_y[:count].to(dev)
    model = run.model.eval()

    sets = parse_sets(set_ or [], kinds=("evaluator", "attack"))
    evaluator_specs = list(evaluator or ([] if attack else ["pgd"]))
    evaluators = merge_options(registry, "evaluator", evaluator_specs, sets.get("evaluator", {}))
    attacks = merge_options(registry, "attack", list(attack or []), sets.get("attack", {}))

    path = out or default_out
    warnings = sanity_checks(model, x, y) if sanity else []
    print_warnings(console, warnings)
    with task_progress(console) as progress:
        result = library.evaluate(
            model,
            (x, y),
            evaluators=evaluators,
            attacks=attacks,
            eps=eps_value,
            norm=norm_value,
            batch_size=batch_size,
            precision=precision,
            seed=seed,
            dataset=cfg.spec("dataset") or "?",
            architecture=cfg.spec("backbone") or "?",
            registry=registry,
            run_dir=Path(run_dir) if run_dir is not None else path.parent,
            image_data=run.data,
            extras={"progress": progress, "console": console},
        )
    result["checkpoint"] = run.source
    result["sanity_warnings"] = warnings
    report_fields = {getattr(registry.get("evaluator", name).cls, "report_field", None): name for name, _ in evaluators}
    rows = [("clean", f"{result['clean_acc']:.2f}")]
    rows += [(k, f"{v:.2f}") for k, v in result["attacks"].items()]
    for report_field, name in report_fields.items():
        if report_field:
            rows.append((f"{name} (worst case over its attacks)", f"{result[report_field]:.2f}"))
    rows.append(("worst case over attacks", f"{result['robust_acc']:.2f}"))
    console.print(
        table(
            f"{result['architecture']} on {result['dataset']} ({result['threat_model']}, eps "
            f"{result['eps']}, {count} images)",
            ["", "accuracy %"],
            rows,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {path}")


def _eps(text: str, norm: str) -> float:
    """``--eps`` as a number: a fraction such as 8/255 or a decimal, in [0, 1] for L-inf, >= 0 for L2."""
    try:
        value = parse_number(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--eps expects a number, got {text!r}", "e.g. --eps 8/255") from None
    high = 1.0 if norm == "linf" else float("inf")
    if not 0 <= value <= high:  # also refuses nan
        rule = "in [0, 1] for --norm linf" if norm == "linf" else ">= 0"
        raise ConfigError(f"--eps must be {rule}, got {text!r}", "e.g. --eps 8/255")
    return value


def merge_options(registry, kind: str, specs: list[str], options: dict[str, str]) -> list[tuple[str, dict]]:
    """The components ``NAME[:VALUE]`` of ``kind`` with their options, from ``--set KIND.OPTION`` (every
    component that has it) or ``KIND.NAME.OPTION`` (that one); an option nobody takes is an error."""
    merged: dict[str, dict] = {}
    for spec in specs:
        entry, opts = registry.split_spec(kind, spec)
        merged[entry.name] = opts
    valid = {name: set(registry.get(kind, name).cls.Config.__dataclass_fields__) for name in merged}
    flag = "--evaluator" if kind == "evaluator" else "--attack"
    for key, value in options.items():
        target, dot, opt = key.partition(".")
        if dot:
            if target not in merged:
                raise ConfigError(
                    f"--set {kind}.{key} names {kind} '{target}', which is not run",
                    f"run it with {flag} {target}, or use one of: {', '.join(merged) or '(none)'}",
                )
            takers = [target]
        else:
            opt = key
            takers = [name for name in merged if opt.replace("-", "_") in valid[name]]
            if not takers:
                raise ConfigError(
                    f"no {kind} run here has an option '{key}' (running: {', '.join(merged) or 'none'})",
                    f"see `energyat describe {kind} NAME` for the options",
                )
        for name in takers:
            merged[name][opt] = value
    return list(merged.items())
