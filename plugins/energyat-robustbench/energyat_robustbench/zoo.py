"""RobustBench's model definitions, read from the installed ``robustbench`` package without running its ``__init__``.

``import robustbench`` runs the package's ``__init__``, which imports its download, data and
evaluation helpers (requests, gdown, pandas, AutoAttack, setuptools' ``pkg_resources``) and,
through the model zoo, every architecture with its dependencies. Building a model needs none of
that: the architectures are plain PyTorch modules in ``robustbench/model_zoo/architectures/``,
and the zoo's tables (``robustbench/model_zoo/cifar10.py``, ``cifar100.py``) say which
architecture, with which arguments, each model name is. So:

- an architecture module is imported from the package's folder as a submodule of a private
  package (:data:`PRIVATE`): its own code runs, unmodified, and nothing else of robustbench does
  (in particular nothing that downloads or unpickles);
- the zoo tables are parsed with :mod:`ast`, never executed: a model name resolves to the
  constructor call its entry holds (``Carmon2019Unlabeled``:
  ``WideResNet(depth=28, widen_factor=10, sub_block1=True)``), whose arguments are literals or
  names the zoo imports from the architecture modules (``Swish``, ``CIFAR10_MEAN``, ``PreActBlock``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import re
import sys
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

from energyat_core.api import ConfigError

PACKAGE = "robustbench"
#: the version whose layout this module reads (and that the plugin's tests use)
VERSION = "1.1.1"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
#: the private package the architecture modules are imported into
PRIVATE = "_energyat_robustbench_architectures"
#: zoo table files and the dataset each is for; a model name is CIFAR-10's unless qualified
ZOO_FILES = {"cifar10": "cifar10.py", "cifar100": "cifar100.py"}
DEFAULT_TABLE = ("cifar10", "Linf")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- the installed package ----------------------------------------------------------------
def package_folder() -> Path:
    """The folder of the installed ``robustbench`` package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the robustbench backbone needs the '{PACKAGE}' package, which is not installed",
            f"{INSTALL} (its architecture definitions need only torch)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def architectures_folder() -> Path:
    """``robustbench/model_zoo/architectures``."""
    return package_folder() / "model_zoo" / "architectures"


def architecture_module(name: str) -> ModuleType:
    """The architecture module ``name`` (e.g. ``wide_resnet``) of the installed package, imported privately."""
    folder = architectures_folder()
    if not _IDENTIFIER.fullmatch(name) or not (folder / f"{name}.py").is_file():
        known = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"robustbench has no architecture module '{name}'", f"use one of: {', '.join(known)}")
    if PRIVATE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(PRIVATE, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        package = importlib.util.module_from_spec(spec)
        sys.modules[PRIVATE] = package
    try:
        with warnings.catch_warnings():  # some modules import timm names that newer timm versions deprecate
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module(f"{PRIVATE}.{name}")
    except ImportError as err:  # the module imports more of robustbench, or a package of its own
        raise ConfigError(
            f"robustbench's architecture module '{name}' cannot be imported ({err})",
            "this architecture needs more of robustbench's dependencies than the plugin installs; install them, "
            "or pick a model of another architecture",
        ) from None


# -- the zoo tables -----------------------------------------------------------------------
@cache
def _zoo(dataset: str) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, ast.expr]]]:
    """(names the zoo file imports: name -> (module, attribute or ""), threat model -> {model name: constructor})."""
    tree = ast.parse((package_folder() / "model_zoo" / ZOO_FILES[dataset]).read_text())
    prefix = f"{PACKAGE}.model_zoo.architectures"
    imports: dict[str, tuple[str, str]] = {}
    assigned: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == prefix:
            imports.update({a.asname or a.name: (a.name, "") for a in node.names})  # whole modules
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix + "."):
            module = (node.module or "").rsplit(".", 1)[1]
            imports.update({a.asname or a.name: (module, a.name) for a in node.names})
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = node.value
    tables: dict[str, dict[str, ast.expr]] = {}
    for value in assigned.values():  # cifar_10_models = OrderedDict([(ThreatModel.Linf, linf), ...])
        for threat, table in _pairs(value):
            if isinstance(threat, ast.Attribute) and isinstance(table, ast.Name) and table.id in assigned:
                tables[threat.attr] = {
                    name.value: model
                    for name, entry in _pairs(assigned[table.id])
                    if isinstance(name, ast.Constant) and isinstance(name.value, str)
                    for model in [_entry_model(entry)]
                    if model is not None
                }
    return imports, tables


def _pairs(node: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """The (key, value) pairs of ``OrderedDict([(k, v), ...])``."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List | ast.Tuple)):
        return []
    return [(e.elts[0], e.elts[1]) for e in node.args[0].elts if isinstance(e, ast.Tuple) and len(e.elts) == 2]


def _entry_model(entry: ast.expr) -> ast.expr | None:
    """The constructor of a zoo entry ``{'model': lambda: Arch(...), 'gdrive_id': ...}`` (the lambda's body)."""
    if not isinstance(entry, ast.Dict):
        return None
    for key, value in zip(entry.keys, entry.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "model":
            return value.body if isinstance(value, ast.Lambda) else value
    return None


def zoo_imports(dataset: str) -> dict[str, tuple[str, str]]:
    """The names the dataset's zoo file imports from the architecture modules: name -> (module, attribute or "")."""
    return _zoo(dataset)[0]


def zoo_entry(name: str) -> tuple[str, ast.expr] | None:
    """(dataset, constructor) of a zoo model: ``NAME`` (CIFAR-10, L-inf) or ``DATASET/THREAT/NAME``; None if unknown."""
    parts = name.split("/")
    dataset, threat = DEFAULT_TABLE
    if len(parts) == 3:
        dataset, threat, name = parts
    elif len(parts) != 1:
        return None
    if dataset not in ZOO_FILES:
        if len(parts) == 3:
            raise ConfigError(
                f"the robustbench backbone reads the model zoo of {', '.join(ZOO_FILES)}, not '{dataset}'",
                "give DATASET/THREAT/NAME with one of those datasets, e.g. cifar100/Linf/NAME",
            )
        return None
    tables = _zoo(dataset)[1]
    if threat not in tables:
        raise ConfigError(
            f"robustbench's {dataset} zoo has no threat model '{threat}'", f"use one of: {', '.join(tables)}"
        )
    model = tables[threat].get(name)
    return None if model is None else (dataset, model)
