"""The ``autoattack`` evaluator: AutoAttack from the ``pyautoattack`` package, attack by attack.

AutoAttack (Croce & Hein, ICML 2020) is not reimplemented here. The library's
``AutoAttack`` object is configured once (:mod:`energyat_autoattack.library`) and its own
``run_standard_evaluation`` is called with ``attacks_to_run`` set to one attack and one
batch of points at a time, so that

* every attack gets its own progress bar (one rich task per attack);
* after every batch the per-point outcome is saved (:mod:`energyat_autoattack.state`); an
  interrupted ``energyat eval`` run again skips every (attack, point) pair already done.

As in AutoAttack's standard evaluation, the attacks run in cascade by default: each one
only sees the points that are clean-correct and survived the attacks before it. The
per-attack masks returned (``autoattack-apgd-ce``, ``autoattack-apgd-t``, ...) are then
cumulative -- the robust accuracy after each attack, as AutoAttack's own log reports it --
and their per-point conjunction is the AutoAttack robust accuracy.

``energyat eval RUN --evaluator autoattack:standard`` runs it (the text after ``:`` is the
``version``); ``--set evaluator.autoattack.OPTION=VALUE`` sets the other options.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from energyat_autoattack.library import (
    ATTACKS,
    VERSIONS,
    build_autoattack,
    captured_library_log,
    describe_autoattack,
)
from energyat_autoattack.state import STATE_FILE, AttackState, state_key
from energyat_core.api import Evaluator, RunContext, batched, option, predict, task_progress


def attack_list(text: str) -> tuple[str, ...]:
    """``"apgd-ce, apgd-t"`` -> ``("apgd-ce", "apgd-t")``."""
    return tuple(a for a in text.replace(" ", "").split(",") if a)


@dataclass
class AutoAttackConfig:
    """Options of the ``autoattack`` evaluator; ``version`` first (``--evaluator autoattack:VERSION``)."""

    version: str = option(
        "standard",
        "standard (APGD-CE, APGD-T, FAB-T, Square), plus, rand (EOT, for randomised defences), custom, "
        "or directly a comma-separated attack list such as apgd-ce,apgd-t (= custom with those attacks)",
    )
    attacks: tuple[str, ...] = option((), "attacks of version=custom, in order", choices=ATTACKS)
    n_iter: int | None = option(None, "iterations of APGD and FAB (default: the library's 100)", ge=1)
    n_restarts: int | None = option(
        None, "restarts of APGD-CE/APGD-DLR and FAB (default: the version's; APGD-T/FAB-T loop over targets)", ge=1
    )
    n_target_classes: int | None = option(
        None, "target classes of APGD-T and FAB-T (default 9, at most the number of classes - 1)", ge=1
    )
    n_queries: int | None = option(None, "queries of the Square attack (default: the library's 5000)", ge=1)
    seed: int = option(0, "seed of the attacks' random starts (AutoAttack's seed)")
    cascade: bool = option(
        True,
        "run each attack only on the points that survived the previous ones (AutoAttack's standard; reported "
        "per-attack accuracies are then cumulative); false: every attack on every clean-correct point",
    )
    resume: bool = option(
        True, f"save per-point results to RUN_DIR/{STATE_FILE} after every batch and skip what is done on a restart"
    )

    def __post_init__(self) -> None:
        # normalisation, not validation (that is check's): an attack list given as version is version=custom
        listed = attack_list(self.version)
        is_list = self.version not in VERSIONS and listed and set(listed) <= set(ATTACKS)
        if is_list and (not self.attacks or tuple(self.attacks) == listed):
            self.version, self.attacks = "custom", listed

    def check(self) -> None:
        """Cross-option rules: a known version, and an attack list exactly with version=custom."""
        if self.version not in VERSIONS:
            listed = attack_list(self.version)
            if listed and set(listed) <= set(ATTACKS):
                raise ValueError("give the attack list either as version or as attacks, not both")
            raise ValueError(
                f"unknown version '{self.version}'; use {', '.join(VERSIONS)} or a comma-separated list of "
                f"{', '.join(ATTACKS)}"
            )
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks lists an attack twice: {list(self.attacks)}")
        if self.version == "custom" and not self.attacks:
            raise ValueError("version=custom needs attacks, e.g. --set evaluator.autoattack.attacks=apgd-ce,apgd-t")
        if self.version != "custom" and self.attacks:
            raise ValueError(f"attacks= is only used with version=custom (version is '{self.version}')")


class AutoAttackEvaluator(Evaluator):
    """AutoAttack (Croce & Hein 2020) via pyautoattack: standard, plus, rand or a custom list; resumable."""

    Config = AutoAttackConfig
    #: eval.json's field for the per-point worst case over the attacks run (RobustBench's name)
    report_field = "autoattack_acc"

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

    def build(self, model: nn.Module, *, eps: float, norm: str, num_classes: int, device: torch.device) -> Any:
        """The library's ``AutoAttack`` object with this evaluator's version and overrides."""
        return build_autoattack(self.config, model, eps=eps, norm=norm, num_classes=num_classes, device=device)

    def describe(self, aa: Any, *, eps: float, norm: str) -> dict[str, Any]:
        """What defines the outcome of the attacks (the part of the state key that is readable)."""
        return describe_autoattack(aa, version=self.config.version, seed=self.config.seed, eps=eps, norm=norm)

    def run(self, model, x, y, *, eps, norm, batch_size):
        """Run the attacks one by one, batch by batch, skipping what the state file has; the per-attack masks."""
        n = len(x)
        clean = torch.cat([predict(model, x[s], batch_size).argmax(1) == y[s] for s in batched(n, batch_size)])
        num_classes = int(predict(model, x[:1], 1).shape[1])
        aa = self.build(model, eps=eps, norm=norm, num_classes=num_classes, device=x.device)
        attacks = list(aa.attacks_to_run)
        describe = self.describe(aa, eps=eps, norm=norm)
        state = AttackState(self.state_path, state_key(describe, model, x, y), n, describe)
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
                out[f"autoattack-{attack}"] = clean & ~(fooled_any if self.config.cascade else fooled)
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
        with task_progress(self.console or Console(stderr=True)) as progress:
            yield progress
