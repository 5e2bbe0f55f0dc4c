"""The export formats that are a state dict for another library's own architecture: ``timm`` and ``torchvision``.

A run's ``model.safetensors`` holds the :class:`~energyat_core.models.Classifier`'s state:
``net.*`` (the backbone) plus the normalisation buffers. These formats write the backbone's
weights alone, under the key names of the target library's model, for a model built with the
target library's own constructor (``timm.create_model``, ``torchvision.models.get_model``).
Modules the run changed against that constructor's model (a CIFAR stem: a 3x3 stride-1 first
convolution, no max-pool) are replaced by the same ``torch.nn`` modules, and the lines that do
it are part of the loading code written to the sidecar. The normalisation is not folded into
the weights: the sidecar gives the mean and std, and the line that applies them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from energyat_core.checkpoint import atomic_save
from energyat_core.errors import CheckpointError
from energyat_core.models.resnet import ResNet18
from energyat_core.models.timm_backbone import TimmBackbone

#: a module replacement: (dotted path in the model, module to put there)
Edit = tuple[str, nn.Module]


@dataclass
class WeightsPlan:
    """How the run's backbone becomes a model of the target library.

    ``build`` creates the target library's model (fresh, for ``num_classes``), ``build_code``
    the line that does the same; ``edits`` are the modules to replace in it; ``rename`` maps the
    backbone's state-dict keys to the target's.
    """

    imports: list[str]
    build: Callable[[], nn.Module]
    build_code: str
    edits: list[Edit] = field(default_factory=list)
    rename: Callable[[str], str] | None = None  # None: the same keys


# -- the two formats ----------------------------------------------------------------------
def timm_plan(backbone: object, net: nn.Module, num_classes: int) -> WeightsPlan | str:
    """The plan of the ``timm`` format, or why it does not apply (a ``timm:NAME`` backbone is needed)."""
    if not isinstance(backbone, TimmBackbone):
        return "it needs a timm:NAME backbone"
    import timm

    c = backbone.config
    name = c.model.strip()
    kwargs: dict[str, Any] = {"num_classes": num_classes, "pretrained": False}
    if c.in_chans != 3:
        kwargs["in_chans"] = c.in_chans
    if c.drop_rate > 0:
        kwargs["drop_rate"] = c.drop_rate
    args = ", ".join([repr(name), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return WeightsPlan(
        imports=["import timm"],
        build=lambda: timm.create_model(name, **kwargs),
        build_code=f"model = timm.create_model({args})",
        edits=module_edits(timm.create_model(name, **kwargs), net),
    )


def torchvision_plan(backbone: object, net: nn.Module, num_classes: int) -> WeightsPlan | str:
    """The plan of the ``torchvision`` format, or why it does not apply.

    It applies to core's ``resnet18`` at width 64 (torchvision's ``resnet18`` with a 3x3
    stride-1 ``conv1`` and no max-pool; ``shortcut`` is torchvision's ``downsample``, ``linear``
    its ``fc``) and to a ``timm:NAME`` model whose name torchvision also builds (timm's ResNets
    keep torchvision's key names).
    """
    import torchvision

    why = "it needs resnet18 (width 64), or a timm:NAME model that torchvision also has (e.g. timm:resnet50)"
    known = set(torchvision.models.list_models(module=torchvision.models))
    if isinstance(backbone, ResNet18) and backbone.config.width == 64:
        name = "resnet18"
        edits: list[Edit] = [("conv1", net.conv1), ("maxpool", nn.Identity())]  # type: ignore[list-item]
        rename: Callable[[str], str] | None = _cifar_resnet_keys
    elif isinstance(backbone, TimmBackbone) and backbone.config.model.strip() in known:
        import timm

        name = backbone.config.model.strip()
        # against timm's model as torchvision builds it (3 input channels): a changed stem shows as an edit
        edits = module_edits(timm.create_model(name, num_classes=num_classes, pretrained=False), net)
        rename = None
    else:
        return why
    return WeightsPlan(
        imports=["import torchvision"],
        build=lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes),
        build_code=f"model = torchvision.models.get_model({name!r}, weights=None, num_classes={num_classes})",
        edits=edits,
        rename=rename,
    )


def _cifar_resnet_keys(key: str) -> str:
    """Core's CIFAR ResNet key -> torchvision's: ``linear`` is ``fc``, a block's ``shortcut`` its ``downsample``."""
    if key.startswith("linear."):
        return "fc." + key[len("linear.") :]
    return key.replace(".shortcut.", ".downsample.")


# -- writing and reading back -------------------------------------------------------------
def write_weights(plan: WeightsPlan, net: nn.Module, path: Path, metadata: dict[str, str]) -> list[str]:
    """Write the backbone's weights under the target's key names (and ``metadata``); return the loading code's lines.

    The lines build the target library's model, make the plan's edits and load the file: after
    them ``model`` is the backbone, in eval mode.
    """
    rename = plan.rename or (lambda key: key)
    state = {rename(k): v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_save(state, path, {"format": "pt", **metadata})
    lines = ["import torch", *plan.imports, "from safetensors.torch import load_file", "", plan.build_code]
    lines += [replacement_code(where, module) for where, module in plan.edits]
    lines += [f"model.load_state_dict(load_file({path.name!r}))", "model.eval()"]
    return lines


def read_weights(plan: WeightsPlan, path: Path) -> nn.Module:
    """The target library's model with the plan's edits and the file's weights (strict), in eval mode."""
    from safetensors.torch import load_file

    model = plan.build()
    for where, module in plan.edits:
        set_module(model, where, copy.deepcopy(module))
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise CheckpointError(
            f"the exported weights do not load into the target library's model ({str(err).splitlines()[0][:160]})",
            "this backbone does not map onto that architecture; export to torchscript or onnx instead",
        ) from None
    return model.eval()


# -- module edits -------------------------------------------------------------------------
def module_edits(reference: nn.Module, trained: nn.Module) -> list[Edit]:
    """The modules of ``trained`` that differ (in class or settings) from ``reference``'s at the same path.

    Only the outermost differing module of a branch is named. Each must be a ``torch.nn``
    module without submodules (a convolution, a pooling, ``Identity``), so that one line of
    plain PyTorch rebuilds it.
    """
    own = dict(reference.named_modules())
    edits: list[Edit] = []

    def walk(where: str, module: nn.Module) -> None:
        ref = own.get(where)
        if ref is None or type(ref) is not type(module) or ref.extra_repr() != module.extra_repr():
            edits.append((where, module))
            return
        for name, child in module.named_children():
            walk(f"{where}.{name}" if where else name, child)

    walk("", trained)
    for where, module in edits:
        if not where or list(module.children()) or getattr(nn, type(module).__name__, None) is not type(module):
            raise CheckpointError(
                f"the backbone's module '{where or 'model'}' ({type(module).__name__}) differs from the library's "
                "model and is not a plain torch.nn layer that one line can rebuild",
                "export to torchscript or onnx instead",
            )
    return edits


def replacement_code(where: str, module: nn.Module) -> str:
    """``model.stem[0] = torch.nn.Conv2d(...)``: the line that puts ``module`` at ``where``."""
    return f"{attribute_code(where)} = torch.nn.{module!r}"


def attribute_code(where: str) -> str:
    """``model.stem[0].conv`` for ``stem.0.conv``."""
    out = "model"
    for part in where.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def set_module(model: nn.Module, where: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``where`` of ``model``."""
    parent_path, _, name = where.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)  # a Sequential's "0" too: its children are named by their index
