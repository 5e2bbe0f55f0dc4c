"""The full configuration of a training run, and how it is assembled.

A run is a set of *settings* (the fields of :class:`RunConfig`, each declared once with
:func:`~energyat_core.options.option`) and one *part* per run kind of
:data:`~energyat_core.kinds.KINDS` (attack, loss, weighter, backbone, dataset, source):
a component name with its options. Configuration flows one way::

    method preset -> config file (TOML/JSON) -> flags -> --set  =>  RunConfig -> components

Every layer is a *document* of the same shape, which is also the shape of a TOML config
file and of the run's ``config.json``::

    epochs = 30                 # settings at the top level
    [attack]                    # one table per part: its name and its options
    name = "pgd"
    steps = 7

:func:`compose` merges the layers and validates everything once (each part's options are
built into its ``Config`` here, and the engine uses those built configs).

(Over 300 lines: about a third of it is the one declaration of every run setting, from which
the flags, config files and docs are derived.)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from energyat_core.errors import ConfigError
from energyat_core.kinds import KIND, RUN_KINDS
from energyat_core.models.normalization import HELP as NORMALIZE_HELP
from energyat_core.models.normalization import check_normalize
from energyat_core.options import as_dict, build_config, first_field, option, resolved_types
from energyat_core.threat import DEFAULT_EPS, ThreatModel, check_norm


@dataclass
class Part:
    """One component of a run: its registered name and options.

    Once resolved, ``config`` is the built (validated) ``Config`` of the component and
    ``options`` holds every option's resolved value; until then ``options`` is what was given.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    config: Any = None

    @property
    def label(self) -> str:
        """``name``, or ``name:VALUE`` when the component's first option is a text (``timm:resnet18``,
        ``imagefolder:PATH``): the form the command line takes."""
        if self.config is None:
            return self.name
        first = first_field(type(self.config))
        if first is not None and resolved_types(type(self.config))[first] is str and getattr(self.config, first):
            return f"{self.name}:{getattr(self.config, first)}"
        return self.name


@dataclass
class RunConfig:
    """Everything that defines a training run (``energyat describe run`` lists the settings)."""

    method: str | None = option(None, "method preset the run started from (`energyat describe method` lists them)")
    data_dir: str | None = option(None, "where datasets are read from or downloaded to")
    epochs: int = option(10, "number of passes over the training set", ge=1)
    batch_size: int = option(128, "images per optimisation step, over all processes under torchrun", ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", "optimiser")
    lr: float = option(0.1, "peak learning rate", gt=0)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    nesterov: bool = option(False, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "weight decay", ge=0)
    schedule: Literal["constant", "multistep", "cosine", "onecycle", "cyclic"] = option(
        "multistep", "learning-rate schedule, stepped every batch"
    )
    milestones: tuple[float, ...] = option(
        (0.5, 0.75), "multistep: fractions of training where lr is multiplied by gamma", gt=0, le=1
    )
    gamma: float = option(0.1, "multistep: lr factor at each milestone", gt=0)
    warmup: float = option(0.25, "onecycle/cyclic: fraction of training spent rising to the peak lr", ge=0, le=1)
    momentum_cycle: tuple[float, ...] = option(
        (),
        "onecycle/cyclic with SGD: momentum LOW,HIGH moved inversely to the lr (HIGH where the lr is lowest), as "
        "torch's OneCycleLR (0.85,0.95) and CyclicLR (0.8,0.9) do by default; empty, or another schedule or "
        "optimiser: constant --momentum",
        ge=0,
        lt=1,
    )
    early_stop: bool = option(
        False,
        "Wong et al.'s --early-stop: after each epoch, PGD-5 (step eps/4) on the epoch's first training batch; when "
        "its accuracy falls by more than 20 points from the epoch before, training stops and the run keeps that "
        "epoch's weights (guards fast AT against catastrophic overfitting)",
    )
    seed: int = option(0, "random seed (data order, augmentation, initialisation, attacks)", ge=0, lt=2**32)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto picks cuda when available")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option("auto", "auto: bf16 on CUDA, fp32 on CPU")
    compile: bool = option(False, "torch.compile the backbone")
    channels_last: bool = option(True, "channels_last memory layout on CUDA")
    augment: bool | None = option(
        None, "random crop (4px padding) and horizontal flip; default: on, except for the synthetic dataset"
    )
    normalize: str = option("dataset", NORMALIZE_HELP)
    attack_bn: Literal["eval", "train"] = option(
        "eval",
        "BatchNorm mode of the model while the training attack runs (each preset follows its authors' code: "
        "train for pgd-at, fgsm-rs, fgsm-sdi; eval for trades)",
    )
    eval_n: int = option(512, "held-out test images used for the per-epoch clean/robust accuracy", ge=1)
    eval_steps: int = option(10, "PGD steps of the per-epoch robust accuracy (0: clean accuracy only)", ge=0)
    eps: float | None = option(
        None,
        "radius of the run's threat model: the training attack, the per-epoch evaluation and `energyat eval` use it "
        "(0: clean training through the same attack); none: 8/255 for linf, 0.5 for l2",
        ge=0,
    )
    norm: Literal["linf", "l2"] = option("linf", "norm of the run's threat model (training attack and evaluation)")
    step: float | None = option(
        None,
        "absolute step size of the training attack (e.g. 2/255); none: the attack's rule relative to eps "
        "(pgd eps/4, fgsm-rs 1.25*eps, trades 0.007 at 8/255: `energyat describe attack NAME`)",
        gt=0,
    )
    max_train: int | None = option(None, "use only the first N training images (quick experiments)", ge=1)
    log: tuple[str, ...] = option(
        (),
        "live logs of per-step and per-epoch scalars (comma list); metrics.jsonl is always written",
        choices=("tensorboard", "csv"),
    )
    log_every: int = option(50, "optimisation steps between two per-step log entries (with --log)", ge=1)
    #: one part per run kind (not a setting: it has flags and tables of its own)
    parts: dict[str, Part] = field(default_factory=dict, repr=False, metadata={"part": True})

    def check(self) -> None:
        """Cross-setting rules and the default radius of the norm (called once, when the config is built)."""
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.norm]
        self.normalize = check_normalize(self.normalize)
        if self.momentum_cycle and (len(self.momentum_cycle) != 2 or self.momentum_cycle[0] > self.momentum_cycle[1]):
            raise ValueError(
                f"momentum_cycle takes LOW,HIGH with LOW <= HIGH, e.g. 0.85,0.95 (got {self.momentum_cycle})"
            )
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(
                f"an L-inf radius above 1 covers every image in [0, 1] (eps {self.eps:g}); e.g. --eps 8/255"
            )

    @property
    def threat(self) -> ThreatModel:
        """The run's threat model (``eps`` resolved to the norm's default when it was not given)."""
        eps = DEFAULT_EPS[self.norm] if self.eps is None else self.eps
        return ThreatModel(eps=eps, norm=self.norm, step=self.step)

    # -- parts ---------------------------------------------------------------------------
    def spec(self, kind: str) -> str | None:
        """A part as the command line names it (``pgd``, ``timm:resnet18``), or ``None`` when the run has none."""
        part = self.parts.get(kind)
        return part.label if part is not None else None

    # -- the document form (config.json, TOML) -------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Settings at the top level, one ``{"name": ..., **options}`` table per part."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in setting_fields()}
        out = json.loads(json.dumps(out))  # tuples -> lists
        for kind, part in self.parts.items():
            options = as_dict(part.config) if part.config is not None else dict(part.options)
            out[kind] = {"name": part.name, **options}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any], registry: Any, kinds: tuple[str, ...] | None = None) -> RunConfig:
        """A config from its document form; ``kinds`` limits which parts are resolved (default: all)."""
        return build(registry, merge_layers([read_document(values, "run config")]), kinds)


def setting_fields() -> list[dataclasses.Field]:
    """The run settings: every field of :class:`RunConfig` but the parts."""
    return [f for f in dataclasses.fields(RunConfig) if not f.metadata.get("part")]


# -- documents and layers -------------------------------------------------------------------
#: a layer: settings, and per run kind (name or None if unchanged, options)
Layer = tuple[dict[str, Any], dict[str, tuple[str | None, dict[str, Any]]]]


def read_document(values: dict[str, Any], where: str) -> Layer:
    """Split a document into settings and parts, rejecting unknown keys with one line.

    A part may be a table (``{"name": "pgd", "steps": 7}``; without ``name`` it only sets
    options) or a plain component name (``"pgd"``, ``"proxy:samples.npz"``). Run
    directories written before parts had tables (a flat name plus ``"options": {kind:
    {...}}``) are read too.
    """
    settings: dict[str, Any] = {}
    parts: dict[str, tuple[str | None, dict[str, Any]]] = {}
    valid = {f.name for f in setting_fields()}
    raw_legacy = values.get("options")
    legacy: dict[str, Any] = raw_legacy if isinstance(raw_legacy, dict) else {}
    for key, value in values.items():
        if key == "options" and key not in valid:
            continue
        if key in KIND and KIND[key].in_run:
            if isinstance(value, dict):
                opts = dict(value)
                name = opts.pop("name", None)
                parts[key] = (None if name is None else str(name), opts)
            elif value is None:
                parts[key] = ("", {})  # explicitly none (optional kinds)
            else:
                parts[key] = (str(value), dict(legacy.get(key, {})))
        elif key in valid:
            settings[key] = value
        else:
            tables = ", ".join(k.name for k in RUN_KINDS)
            raise ConfigError(
                f"{where} has unknown setting '{key}'",
                f"valid settings: {', '.join(sorted(valid))}; tables: {tables} (see `energyat describe run`)",
            )
    return settings, parts


def merge_layers(layers: list[Layer]) -> Layer:
    """Later layers win; a layer that names another component for a part drops the options
    earlier layers gave the previous one, so options never leak between components."""
    settings: dict[str, Any] = {}
    parts: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for layer_settings, layer_parts in layers:
        settings.update(layer_settings)
        for kind, (name, opts) in layer_parts.items():
            old_name, old_opts = parts.get(kind, (None, {}))
            if name is not None and name != old_name:
                parts[kind] = (name, dict(opts))
            else:
                parts[kind] = (old_name, {**old_opts, **opts})
    return settings, parts


def build(registry: Any, layer: Layer, kinds: tuple[str, ...] | None = None) -> RunConfig:
    """Validate a merged layer into a :class:`RunConfig`, building each part's ``Config`` once."""
    settings, given = layer
    cfg: RunConfig = build_config(RunConfig, settings, "run config", "--{}")
    for kind in RUN_KINDS:
        name, opts = given.get(kind.name, (None, {}))
        name = kind.default if name is None else (name or None)
        if name is None:
            if opts:
                raise ConfigError(
                    f"options {sorted(opts)} were given for {kind.name}, but the run has no {kind.name}",
                    f"choose one with {kind.flag} NAME",
                )
            continue
        if kinds is not None and kind.name not in kinds:
            cfg.parts[kind.name] = Part(name, dict(opts))
            continue
        entry, config = registry.config(kind.name, name, opts)
        cfg.parts[kind.name] = Part(entry.name, as_dict(config), config)
        if kind.name == "attack":
            check_norm(getattr(entry.cls, "norms", None), kind.name, entry.name, cfg.norm)
    return cfg


def parse_sets(items: list[str], kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """``["attack.steps=7", "loss.beta=3"]`` -> ``{"attack": {"steps": "7"}, "loss": {"beta": "3"}}``."""
    kinds = kinds or tuple(k.name for k in RUN_KINDS)
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            example = f"{kinds[0]}.steps=7" if kinds[0] == "attack" else f"{kinds[0]}.OPTION=VALUE"
            raise ConfigError(f"cannot read --set '{item}'", f"write it as KIND.OPTION=VALUE, e.g. --set {example}")
        if kind not in kinds:
            raise ConfigError(
                f"--set '{item}' names unknown kind '{kind}'",
                f"use one of {', '.join(kinds)}; run settings have flags of their own (see --help)",
            )
        out.setdefault(kind, {})[name.strip()] = value.strip()
    return out


def load_file(path: str) -> dict[str, Any]:
    """Read a config file: TOML, or the JSON of a run's ``config.json``; one line if it is unreadable."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist", "check the path given to --config")
    kind = "JSON" if p.suffix == ".json" else "TOML"
    try:
        text = p.read_text()
        values = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(
            f"config file '{path}' is not valid {kind} ({err})", "fix the syntax at the line named"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file '{path}' holds a {type(values).__name__}, not a table of settings",
            'write settings at the top level and one table per part, e.g. epochs = 10 and [attack] name = "pgd"',
        )
    return values


def method_layer(method: Any) -> Layer:
    """The layer a resolved :class:`~energyat_core.methods.Method` preset sets."""
    settings, parts = read_document({"method": method.name, **method.settings}, f"method '{method.name}'")
    for kind, (name, opts) in method.parts.items():
        if kind not in KIND or not KIND[kind].in_run:
            raise ConfigError(
                f"method '{method.name}' sets unknown part '{kind}'",
                f"fix the preset: parts are {', '.join(k.name for k in RUN_KINDS)}",
            )
        parts[kind] = (name, dict(opts))
    return settings, parts


def compose(
    registry: Any,
    *,
    method: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig`: preset < config file < flags < ``--set``.

    ``flags`` maps setting and run-kind names to values (``None``: not given).
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    file_values = load_file(config_file) if config_file else {}
    layers: list[Layer] = []
    method = given.get("method") or method or file_values.get("method")
    if method is not None and not isinstance(method, str):
        raise ConfigError(
            f"the method must be a preset name, got {type(method).__name__} {method!r}",
            'write it as method = "NAME" (`energyat describe method` lists them)',
        )
    if method:
        layers.append(method_layer(registry.method(method)))
    if file_values:
        layers.append(read_document(file_values, f"config file '{config_file}'"))
    layers.append(read_document(given, "command line"))
    layers.append(({}, {kind: (None, opts) for kind, opts in parse_sets(sets or []).items()}))
    return build(registry, merge_layers(layers))
