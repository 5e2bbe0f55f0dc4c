"""Building a RobustBench model from its zoo name or an architecture call, with robustbench's own code.

The call (``WideResNet(depth=28, widen_factor=10)``, or the one a zoo entry holds) is read with
:mod:`ast` and never evaluated: its callable is a name of robustbench's architecture modules,
and its arguments are literals, names the zoo imports from those modules (``Swish``,
``CIFAR10_MEAN``, ``PreActBlock``) or ``nn.LAYER``. Only the architecture's constructor runs.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from torch import nn

from energyat_core.api import ConfigError
from energyat_robustbench.zoo import (
    DEFAULT_TABLE,
    architecture_module,
    architectures_folder,
    zoo_entry,
    zoo_imports,
)

#: the keyword that makes a model constructor download weights
PRETRAINED = "pretrained"


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """The model ``spec`` names, built by robustbench's own architecture code for ``num_classes`` classes.

    ``num_classes=None`` builds it as the zoo does (the constructor's own class count).

    ``spec``: a zoo name (``Carmon2019Unlabeled``, ``cifar100/Linf/NAME``) or an architecture call
    as the zoo writes one (``WideResNet(depth=28, widen_factor=10)``,
    ``dm_wide_resnet.DMWideResNet(depth=70, width=16, activation_fn=Swish)``).
    """
    spec = spec.strip()
    entry = zoo_entry(spec)
    if entry is not None:
        dataset, call = entry
        what = f"RobustBench model '{spec}' ({ast.unparse(call)})"
    else:
        dataset = DEFAULT_TABLE[0]
        try:
            call = ast.parse(spec, mode="eval").body
        except SyntaxError:
            raise ConfigError(
                f"'{spec}' is neither a RobustBench model name nor an architecture call",
                "give a zoo name (e.g. Carmon2019Unlabeled, cifar100/Linf/NAME) or a call such as "
                "WideResNet(depth=28, widen_factor=10)",
            ) from None
        what = f"robustbench architecture '{spec}'"
    names = _Names(dataset, what)
    func, args, kwargs = _call_parts(call, names)
    _check_pretrained(kwargs, what)
    if num_classes is not None:
        _set_num_classes(func, args, kwargs, num_classes, what)
    try:
        model = func(*args, **kwargs)
    except Exception as err:  # the architecture's own checks: TypeError, ValueError, AssertionError, ...
        raise ConfigError(
            f"{what} could not be built ({type(err).__name__}: {str(err).strip()[:160] or 'no message'})",
            "check the arguments against the architecture's code in robustbench/model_zoo/architectures",
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} does not build a torch module", "name an architecture class or function")
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if num_classes is not None and heads and heads[-1].out_features != num_classes:
        raise ConfigError(
            f"{what} has {heads[-1].out_features} outputs, the dataset {num_classes} classes",
            "use the dataset the model was made for, or give num_classes= in the architecture call",
        )
    return model


class _Names:
    """Names an architecture call may use: ``module.Name``, or a name the dataset's zoo file imports."""

    def __init__(self, dataset: str, what: str) -> None:
        self.imports = {**zoo_imports("cifar10"), **zoo_imports(dataset)}
        self.what = what

    def get(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name) and node.id in self.imports:
            source, attribute = self.imports[node.id]
            return getattr(architecture_module(source), attribute) if attribute else architecture_module(source)
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("nn", "torch.nn"):
            layer = getattr(nn, node.attr, None)  # torch's own layers, e.g. activation_fn=nn.SiLU
            if inspect.isclass(layer) and issubclass(layer, nn.Module):
                return layer
            raise self._unknown(node)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in self.imports and not self.imports[node.value.id][1]:
                module = architecture_module(self.imports[node.value.id][0])
            elif (architectures_folder() / f"{node.value.id}.py").is_file():
                module = architecture_module(node.value.id)
            else:
                raise self._unknown(node)
            if not hasattr(module, node.attr):
                raise self._unknown(node)
            return getattr(module, node.attr)
        raise self._unknown(node)

    def _unknown(self, node: ast.expr) -> ConfigError:
        return ConfigError(
            f"{self.what} uses '{ast.unparse(node)}', which is not a name of robustbench's architecture modules",
            "a model defined in the zoo's own files (or built with timm) is not supported; use names the zoo "
            "imports (WideResNet, DMWideResNet, Swish, ...) or MODULE.NAME of robustbench/model_zoo/architectures",
        )


def _call_parts(call: ast.expr, names: _Names) -> tuple[Any, list[Any], dict[str, Any]]:
    """The callable, positional and keyword arguments of ``Arch(...)`` (or ``Arch`` alone: no arguments)."""
    if not isinstance(call, ast.Call):
        func = names.get(call)
        if not callable(func):
            raise names._unknown(call)
        return func, [], {}
    func = names.get(call.func)
    if not callable(func) or any(k.arg is None for k in call.keywords):
        raise names._unknown(call.func)
    args = [_value(a, names) for a in call.args]
    return func, args, {k.arg: _value(k.value, names) for k in call.keywords if k.arg is not None}


def _value(node: ast.expr, names: _Names) -> Any:
    """An argument: a literal (numbers, strings, tuples, lists), or a class or constant of the architecture modules."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        number = node.operand.value
        if isinstance(number, int | float) and not isinstance(number, bool):
            return -number
    if isinstance(node, ast.Tuple | ast.List):
        items = [_value(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Name | ast.Attribute):
        value = names.get(node)
        if inspect.isclass(value) or isinstance(value, int | float | str | tuple | list):
            return value
    raise ConfigError(
        f"{names.what}: the argument '{ast.unparse(node)}' is not a literal or a class or constant of robustbench's "
        "architecture modules",
        "give numbers, strings, tuples, or names such as Swish and CIFAR10_MEAN",
    )


def _check_pretrained(kwargs: dict[str, Any], what: str) -> None:
    if kwargs.get(PRETRAINED):
        raise ConfigError(
            f"{what} asks for {PRETRAINED}=True, which downloads weights",
            "energyat downloads nothing: leave it out and give a local file with --set backbone.checkpoint=FILE",
        )


def _set_num_classes(func: Any, args: list[Any], kwargs: dict[str, Any], num_classes: int, what: str) -> None:
    """Pass ``num_classes`` where the constructor takes it; refuse one given that differs from the dataset's."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return
    if "num_classes" not in params:
        return
    given = args[params.index("num_classes")] if params.index("num_classes") < len(args) else kwargs.get("num_classes")
    if given is None:
        kwargs["num_classes"] = num_classes
    elif given != num_classes:
        raise ConfigError(
            f"{what} is made for {given} classes, the dataset has {num_classes}",
            "use the dataset the model was made for (e.g. --dataset cifar100 for num_classes=100)",
        )
