"""The adapter to the AutoAttack library (``pyautoattack``, pinned in pyproject.toml).

Nothing of APGD, FAB or Square is reimplemented: :func:`build_autoattack` configures the
library's own ``AutoAttack`` object (version, threat model, seed and the optional
iteration overrides), :func:`describe_autoattack` reads back what defines its outcome,
and :func:`captured_library_log` collects the warnings the library logs (its own model
checks) so that they are shown once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from energyat_core.api import ConfigError

#: the AutoAttack implementation this plugin is pinned to (see pyproject.toml)
LIBRARY = "pyautoattack"
#: the library's versions; ``custom`` runs the attacks listed in the evaluator's ``attacks``
VERSIONS = ("standard", "plus", "rand", "custom")
#: the attacks the library can run in a custom list
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: energyat's threat models -> the library's names
NORMS = {"linf": "Linf", "l2": "L2"}


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
    """The installed library's version (``missing`` when it is not installed)."""
    try:
        import pyautoattack

        return str(getattr(pyautoattack, "__version__", "unknown"))
    except ImportError:
        return "missing"


def build_autoattack(
    config: Any, model: nn.Module, *, eps: float, norm: str, num_classes: int, device: torch.device
) -> Any:
    """The library's ``AutoAttack`` object for an evaluator ``config``: its version and overrides."""
    if norm not in NORMS:
        raise ConfigError(f"AutoAttack has no threat model '{norm}' here", "use --norm linf or l2")
    aa = import_autoattack()(
        model,
        attacks=list(config.attacks) if config.version == "custom" else None,
        device=device,
        eps=eps,
        norm=NORMS[norm],
        seed=config.seed,
        version=config.version,
    )
    aa.verbose = False
    if config.n_iter is not None:
        for apgd in (aa.apgd, aa.apgd_targeted):
            set_apgd_iterations(apgd, config.n_iter)
        aa.fab.n_iter = config.n_iter
    if config.n_restarts is not None:
        aa.apgd.n_restarts = config.n_restarts
        aa.fab.n_restarts = config.n_restarts
    if config.n_queries is not None:
        aa.square.n_queries = config.n_queries
    targets = config.n_target_classes if config.n_target_classes is not None else aa.apgd_targeted.n_target_classes
    targets = max(1, min(targets, num_classes - 1))
    aa.apgd_targeted.n_target_classes = targets
    aa.fab.n_target_classes = targets
    return aa


def describe_autoattack(aa: Any, *, version: str, seed: int, eps: float, norm: str) -> dict[str, Any]:
    """What defines the outcome of the library's attacks (the readable part of a state key)."""
    return {
        "library": f"{LIBRARY}=={library_version()}",
        "version": version,
        "attacks": list(aa.attacks_to_run),
        "eps": eps,
        "norm": norm,
        "seed": seed,
        "apgd": [aa.apgd.n_iter, aa.apgd.n_restarts, aa.apgd.eot_iter],
        "apgd_t": [aa.apgd_targeted.n_iter, aa.apgd_targeted.n_target_classes],
        "fab": [aa.fab.n_iter, aa.fab.n_restarts, aa.fab.n_target_classes],
        "square": [aa.square.n_queries],
    }


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
