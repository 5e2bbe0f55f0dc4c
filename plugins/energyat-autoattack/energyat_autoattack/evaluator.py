"""The ``autoattack`` evaluator: AutoAttack from the ``pyautoattack`` package, attack by attack.

AutoAttack (Croce & Hein, ICML 2020) is not reimplemented here. The library's
``AutoAttack`` object is configured once (version, threat model, seed, optional
iteration overrides) and its own ``run_standard_evaluation`` is called with
``attacks_to_run`` set to one attack and one batch of points at a time, so that

* every attack gets its own progress bar (one rich task per attack);
* after every batch the per-point outcome is written to
  ``RUN_DIR/autoattack_state.safetensors`` (atomically), keyed by a hash of the attack
  configuration, the evaluated points and the model's weights; an interrupted
  ``energyat eval`` run again skips every (attack, point) pair already done.

As in AutoAttack's standard evaluation, the attacks run in cascade by default: each one
only sees the points that are clean-correct and survived the attacks before it. The
per-attack masks returned (``autoattack-apgd-ce``, ``autoattack-apgd-t``, ...) are then
cumulative -- the robust accuracy after each attack, as AutoAttack's own log reports it --
and their per-point conjunction is the AutoAttack robust accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from energyat_core.checkpoint import atomic_save, read_safetensors
from energyat_core.components import Evaluator, RunContext
from energyat_core.config import option
from energyat_core.errors import ConfigError
from energyat_core.evaluation import batched, predict

#: the AutoAttack implementation this plugin is pinned to (see pyproject.toml)
LIBRARY = "pyautoattack"
VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STATE_FILE = "autoattack_state.safetensors"
STATE_FORMAT = "energyat-autoattack-1"
NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass
class AutoAttackConfig:
    """Options of the ``autoattack`` evaluator."""

    version: str = option(
        "standard",
        "standard (APGD-CE, APGD-T, FAB-T, Square), plus, rand (EOT, for randomised defences), custom, "
        "or directly a comma-separated attack list such as apgd-ce,apgd-t (= custom with those attacks)",
    )
    attacks: tuple[str, ...] = option((), f"attacks of version=custom, in order; any of {', '.join(ATTACKS)}")
    n_iter: int | None = option(None, "iterations of APGD and FAB (default: the library's 100)")
    n_restarts: int | None = option(
        None, "restarts of APGD-CE/APGD-DLR and FAB (default: the version's; APGD-T/FAB-T loop over targets)"
    )
    n_target_classes: int | None = option(
        None, "target classes of APGD-T and FAB-T (default 9, at most the number of classes - 1)"
    )
    n_queries: int | None = option(None, "queries of the Square attack (default: the library's 5000)")
    seed: int = option(0, "seed of the attacks' random starts (AutoAttack's seed)")
    cascade: bool = option(
        True,
        "run each attack only on the points that survived the previous ones (AutoAttack's standard; reported "
        "per-attack accuracies are then cumulative); false: every attack on every clean-correct point",
    )
    resume: bool = option(
        True, f"save per-point results to RUN_DIR/{STATE_FILE} after every batch and skip what is done on a restart"
    )

    def __post_init__(self):
        if self.version not in VERSIONS:
            listed = tuple(a for a in self.version.replace(" ", "").split(",") if a)
            if not listed or any(a not in ATTACKS for a in listed):
                raise ValueError(
                    f"unknown version '{self.version}'; use {', '.join(VERSIONS)} or a comma-separated list of "
                    f"{', '.join(ATTACKS)}"
                )
            if self.attacks and tuple(self.attacks) != listed:
                raise ValueError("give the attack list either as version or as attacks, not both")
            self.version, self.attacks = "custom", listed
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ValueError(f"unknown attack(s) {bad}; choose from {', '.join(ATTACKS)}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks lists an attack twice: {list(self.attacks)}")
        if self.version == "custom" and not self.attacks:
            raise ValueError("version=custom needs attacks, e.g. --set evaluator.attacks=apgd-ce,apgd-t")
        if self.version != "custom" and self.attacks:
            raise ValueError(f"attacks= is only used with version=custom (version is '{self.version}')")
        for name in ("n_iter", "n_restarts", "n_target_classes", "n_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def import_autoattack() -> Any:
    """The library's ``AutoAttack`` class, or a one-line error saying how to install it."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise ConfigError(
            f"the autoattack evaluator needs the '{LIBRARY}' package",
            "pip install energyat-autoattack (it pins pyautoattack==0.2.0)",
        ) from None
    return AutoAttack


def library_version() -> str:
    try:
        import pyautoattack

        return str(getattr(pyautoattack, "__version__", "unknown"))
    except ImportError:
        return "missing"


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of the raw bytes (and shapes and dtypes) of ``tensors``."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the model's weights and buffers, so that a state never outlives a retrained model."""
    state = model.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(fingerprint(state[key]).encode())
    return h.hexdigest()


class _Collect(logging.Handler):
    """Collects the library's log warnings (e.g. its own model checks) to show them once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


@contextlib.contextmanager
def captured_library_log(name: str = "auto-attack") -> Iterator[_Collect]:
    """Route the library's logger into a collector for the duration of the block."""
    logger = logging.getLogger(name)
    handler = _Collect()
    old_propagate, old_level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = old_propagate, old_level


class AttackState:
    """Per-point outcomes of each attack, for one configuration key, persisted in a safetensors file.

    For attack ``a``: ``done[a]`` marks the points whose outcome under ``a`` is known, and
    ``fooled[a]`` those of them that ``a`` misclassified. Entries of other keys in the same
    file (another model, other points, another configuration) are kept untouched.
    """

    def __init__(self, path: Path | None, key: str, n: int, describe: dict[str, Any]) -> None:
        self.path, self.key, self.n, self.describe = path, key, n, describe
        self.done: dict[str, torch.Tensor] = {}
        self.fooled: dict[str, torch.Tensor] = {}
        self._others: dict[str, torch.Tensor] = {}
        self._other_configs: dict[str, Any] = {}
        if path is not None and path.exists():
            tensors, meta = read_safetensors(path)
            if meta.get("format") != STATE_FORMAT:
                raise ConfigError(
                    f"'{path}' is not an energyat AutoAttack state file",
                    "move it away, or pass --set evaluator.resume=false",
                )
            configs = json.loads(meta.get("configs", "{}"))
            prefix = f"{key}/"
            for name, t in tensors.items():
                if name.startswith(prefix):
                    attack, _, field = name[len(prefix) :].rpartition("/")
                    if t.shape == (n,):
                        getattr(self, field)[attack] = t.bool()
                else:
                    self._others[name] = t
            self._other_configs = {k: v for k, v in configs.items() if k != key}

    def masks(self, attack: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(self.n, dtype=torch.bool)
        self.done.setdefault(attack, zeros.clone())
        self.fooled.setdefault(attack, zeros.clone())
        return self.done[attack].to(device), self.fooled[attack].to(device)

    def update(self, attack: str, done: torch.Tensor, fooled: torch.Tensor) -> None:
        self.done[attack] = done.detach().cpu().clone()
        self.fooled[attack] = fooled.detach().cpu().clone()
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tensors = dict(self._others)
        for attack in self.done:
            tensors[f"{self.key}/{attack}/done"] = self.done[attack]
            tensors[f"{self.key}/{attack}/fooled"] = self.fooled[attack]
        configs = {**self._other_configs, self.key: self.describe}
        atomic_save(tensors, self.path, {"format": STATE_FORMAT, "configs": json.dumps(configs)})


class AutoAttackEvaluator(Evaluator):
    """AutoAttack (Croce & Hein 2020) via pyautoattack: standard, plus, rand or a custom list; resumable."""

    Config = AutoAttackConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.state_path: Path | None = None
        self.progress = None
        self.console: Console | None = None
        #: warnings the library logged during the last run (its own model checks)
        self.library_warnings: list[str] = []
        #: per attack, how many points the last run actually attacked (the rest came from the state file)
        self.attacked: dict[str, int] = {}

    def setup(self, ctx: RunContext) -> None:
        """Take the run directory (for the state file), and the progress display of ``energyat eval``."""
        if ctx.run_dir is not None and self.config.resume:
            self.state_path = Path(ctx.run_dir) / STATE_FILE
        self.progress = ctx.extras.get("progress")
        self.console = ctx.extras.get("console")

    # -- configuration of the library's AutoAttack object ----------------------------------
    def build(self, model: nn.Module, *, eps: float, norm: str, num_classes: int, device: torch.device) -> Any:
        """The library's ``AutoAttack`` object with this evaluator's version and overrides."""
        if norm not in NORMS:
            raise ConfigError(f"AutoAttack has no threat model '{norm}' here", "use --norm linf or l2")
        cfg = self.config
        auto_attack = import_autoattack()
        aa = auto_attack(
            model,
            attacks=list(cfg.attacks) if cfg.version == "custom" else None,
            device=device,
            eps=eps,
            norm=NORMS[norm],
            seed=cfg.seed,
            version=cfg.version,
        )
        aa.verbose = False
        if cfg.n_iter is not None:
            for apgd in (aa.apgd, aa.apgd_targeted):
                set_apgd_iterations(apgd, cfg.n_iter)
            aa.fab.n_iter = cfg.n_iter
        if cfg.n_restarts is not None:
            aa.apgd.n_restarts = cfg.n_restarts
            aa.fab.n_restarts = cfg.n_restarts
        if cfg.n_queries is not None:
            aa.square.n_queries = cfg.n_queries
        targets = cfg.n_target_classes if cfg.n_target_classes is not None else aa.apgd_targeted.n_target_classes
        targets = max(1, min(targets, num_classes - 1))
        aa.apgd_targeted.n_target_classes = targets
        aa.fab.n_target_classes = targets
        return aa

    def describe(self, aa: Any, *, eps: float, norm: str) -> dict[str, Any]:
        """What defines the outcome of the attacks (the part of the state key that is readable)."""
        return {
            "library": f"{LIBRARY}=={library_version()}",
            "version": self.config.version,
            "attacks": list(aa.attacks_to_run),
            "eps": eps,
            "norm": norm,
            "seed": self.config.seed,
            "apgd": [aa.apgd.n_iter, aa.apgd.n_restarts, aa.apgd.eot_iter],
            "apgd_t": [aa.apgd_targeted.n_iter, aa.apgd_targeted.n_target_classes],
            "fab": [aa.fab.n_iter, aa.fab.n_restarts, aa.fab.n_target_classes],
            "square": [aa.square.n_queries],
        }

    # -- the evaluation ---------------------------------------------------------------------
    def run(self, model, x, y, *, eps, norm, batch_size):
        n = len(x)
        clean = torch.cat([predict(model, x[s], batch_size).argmax(1) == y[s] for s in batched(n, batch_size)])
        num_classes = int(predict(model, x[:1], 1).shape[1])
        aa = self.build(model, eps=eps, norm=norm, num_classes=num_classes, device=x.device)
        attacks = list(aa.attacks_to_run)
        describe = self.describe(aa, eps=eps, norm=norm)
        key_text = json.dumps(describe, sort_keys=True) + fingerprint(x, y) + model_fingerprint(model)
        key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
        state = AttackState(self.state_path, key, n, describe)
        self.attacked = {}
        out: dict[str, torch.Tensor] = {}
        fooled_any = torch.zeros(n, dtype=torch.bool, device=x.device)
        with captured_library_log() as log, self._progress() as progress:
            for attack in attacks:
                done, fooled = state.masks(attack, x.device)
                candidates = clean & ~fooled_any if self.config.cascade else clean.clone()
                todo = (candidates & ~done).nonzero().flatten()
                task = progress.add_task(
                    f"autoattack {attack}",
                    total=int(candidates.sum()),
                    completed=int((candidates & done).sum()),
                )
                for s in batched(len(todo), batch_size):
                    idx = todo[s]
                    aa.attacks_to_run = [attack]
                    _, y_adv = aa.run_standard_evaluation(x[idx], y[idx], batch_size=len(idx))
                    done[idx] = True
                    fooled[idx] = y_adv.to(y.device) != y[idx]
                    state.update(attack, done, fooled)
                    progress.advance(task, len(idx))
                self.attacked[attack] = len(todo)
                fooled_any |= fooled & candidates
                if self.config.cascade:
                    out[f"autoattack-{attack}"] = clean & ~fooled_any
                else:
                    out[f"autoattack-{attack}"] = clean & ~fooled
            aa.attacks_to_run = attacks
        self.library_warnings = list(log.messages)
        if self.library_warnings:
            console = self.console or Console(stderr=True)
            for msg in self.library_warnings:
                console.print(
                    f"[yellow]warning (AutoAttack's check): {escape(msg)}[/]", highlight=False, soft_wrap=True
                )
        return out

    @contextlib.contextmanager
    def _progress(self):
        if self.progress is not None:
            yield self.progress
            return
        from energyat_core.progress import task_progress

        with task_progress(self.console or Console(stderr=True)) as progress:
            yield progress


def set_apgd_iterations(apgd: Any, n_iter: int) -> None:
    """Set an APGD attack's iteration count and the step-size checkpoints derived from it.

    The library derives its checkpoint schedule (first checkpoint at 22% of the iterations,
    minimum interval 6%, decrement 3%) from ``n_iter`` in its constructor only; the same
    formulas are applied here so that fewer iterations keep the published schedule, scaled.
    """
    apgd.n_iter = n_iter
    apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)
