"""The full configuration of a training run, and how it is assembled.

Configuration flows one way: method preset -> TOML file -> command-line flags ->
:class:`RunConfig` -> components. The config is saved as JSON in the run directory and
in the metadata of ``model.safetensors``, so a run can be evaluated or resumed from its
directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from energyat_core.config import build_config, option
from energyat_core.errors import ConfigError

COMPONENT_KINDS = ("attack", "loss", "weighter", "backbone", "dataset", "source")


@dataclass
class RunConfig:
    """Everything that defines a training run (``energyat describe run`` lists it)."""

    method: str | None = option(None, "method preset the run started from (informational)")
    attack: str = option("none", "attack that finds x_adv (`energyat describe attack NAME`)")
    loss: str = option("ce", "per-sample training loss")
    weighter: str = option("uniform", "per-sample weights of the batch mean")
    backbone: str = option("preact_resnet18", "network architecture (or timm:NAME)")
    dataset: str = option("synthetic", "synthetic, cifar10, cifar100, svhn or imagefolder:PATH")
    source: str | None = option(None, "extra data mixed into every batch, e.g. proxy:samples.npz (none by default)")
    options: dict[str, dict[str, Any]] = option({}, "component options by kind, e.g. {'attack': {'steps': 7}}")
    data_dir: str | None = option(None, "where datasets are read from or downloaded to")
    epochs: int = option(10, "number of passes over the training set")
    batch_size: int = option(128, "images per optimisation step (per process under torchrun)")
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", "optimiser")
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "weight decay")
    schedule: Literal["constant", "multistep", "cosine", "onecycle", "cyclic"] = option(
        "multistep", "learning-rate schedule, stepped every batch"
    )
    milestones: tuple[float, ...] = option(
        (0.5, 0.75), "multistep: fractions of training where lr is multiplied by gamma"
    )
    gamma: float = option(0.1, "multistep: lr factor at each milestone")
    warmup: float = option(0.25, "onecycle/cyclic: fraction of training spent rising to the peak lr")
    seed: int = option(0, "random seed (data order, augmentation, initialisation, attacks)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto picks cuda when available")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option("auto", "auto: bf16 on CUDA, fp32 on CPU")
    compile: bool = option(False, "torch.compile the backbone")
    channels_last: bool = option(True, "channels_last memory layout on CUDA")
    augment: bool | None = option(
        None, "random crop (4px padding) and horizontal flip; default: on, except for the synthetic dataset"
    )
    attack_bn: Literal["eval", "train"] = option("eval", "BatchNorm mode while the attack runs (eval: Madry et al.)")
    eval_n: int = option(512, "held-out test images used for the per-epoch clean/robust accuracy")
    eval_steps: int = option(10, "PGD steps of the per-epoch robust accuracy")
    eps: float = option(8 / 255, "threat-model radius of the per-epoch evaluation")
    norm: Literal["linf", "l2"] = option("linf", "threat model of the per-epoch evaluation")
    max_train: int | None = option(None, "use only the first N training images (quick experiments)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        values = dict(values)
        return build_config(cls, values, "run config")

    def component_options(self, kind: str) -> dict[str, Any]:
        return dict(self.options.get(kind, {}))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; component options merge per kind and per key."""
    out = dict(base)
    for key, value in override.items():
        if key == "options":
            opts = {k: dict(v) for k, v in out.get("options", {}).items()}
            for kind, kv in value.items():
                opts.setdefault(kind, {}).update(kv)
            out["options"] = opts
        else:
            out[key] = value
    return out


def parse_sets(items: list[str], kinds: tuple[str, ...] = COMPONENT_KINDS) -> dict[str, dict[str, Any]]:
    """``["attack.steps=7", "loss.beta=3"]`` -> ``{"attack": {"steps": "7"}, "loss": {"beta": "3"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"cannot read --set '{item}'", "write it as KIND.OPTION=VALUE, e.g. --set attack.steps=7")
        if kind not in kinds:
            raise ConfigError(
                f"--set '{item}' names unknown kind '{kind}'",
                f"use one of {', '.join(kinds)}; run settings have flags of their own (see --help)",
            )
        out.setdefault(kind, {})[name.strip()] = value.strip()
    return out


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML run config: top-level run settings, and ``[attack]``-style tables.

    A table may carry ``name``; its other keys are that component's options::

        epochs = 30
        [attack]
        name = "pgd"
        steps = 7
    """
    from pathlib import Path

    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist", "check the path given to --config")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"config file '{path}' is not valid TOML ({err})", "fix the syntax at the line named"
        ) from None
    out: dict[str, Any] = {"options": {}}
    valid = set(field_names())
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in COMPONENT_KINDS:
                raise ConfigError(f"config file has unknown table [{key}]", f"tables are {', '.join(COMPONENT_KINDS)}")
            value = dict(value)
            if "name" in value:
                out[key] = value.pop("name")
            out["options"][key] = value
        elif key in valid and key != "options":
            out[key] = value
        else:
            raise ConfigError(f"config file has unknown setting '{key}'", f"valid settings: {', '.join(sorted(valid))}")
    return out


def from_method(method: Any) -> dict[str, Any]:
    """The config values a :class:`~energyat_core.methods.Method` preset sets."""
    values: dict[str, Any] = {"method": method.name, "options": {}}
    for kind in ("attack", "loss", "weighter"):
        name, opts = getattr(method, kind)
        values[kind] = name
        if opts:
            values["options"][kind] = dict(opts)
    unknown = set(method.training) - set(field_names())
    if unknown:
        raise ConfigError(
            f"method '{method.name}' sets unknown run settings {sorted(unknown)}",
            "fix the preset: its training dict takes RunConfig fields",
        )
    values.update(method.training)
    return values


def compose(
    registry: Any,
    *,
    method: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig`: preset < config file < flags < ``--set``.

    A flag that changes a component (``--attack``) drops the options the preset gave
    the previous one, so that options never leak between components.
    """
    values: dict[str, Any] = {"options": {}}
    layers: list[dict[str, Any]] = []
    file_values = load_toml(config_file) if config_file else {}
    method = (flags or {}).get("method") or method or file_values.get("method")
    if method:
        layers.append(from_method(registry.method(method)))
    layers.append(file_values)
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    layers.append({"options": parse_sets(sets or [])})
    for layer in layers:
        for kind in COMPONENT_KINDS:
            if kind in layer and layer[kind] != values.get(kind):
                values.setdefault("options", {}).pop(kind, None)
        values = merge(values, layer)
    cfg = RunConfig.from_dict(values)
    validate_components(registry, cfg)
    return cfg


def validate_components(registry: Any, cfg: RunConfig) -> None:
    """Check every component name and option without building anything."""
    for kind in COMPONENT_KINDS:
        spec = getattr(cfg, kind)
        if spec is None:  # optional kinds (source)
            continue
        entry, options = registry.split_spec(kind, spec, cfg.component_options(kind))
        build_config(entry.cls.Config, options, f"{kind} '{entry.name}'")
