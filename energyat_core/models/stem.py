"""Small-image stems for ImageNet architectures, and a check that a model keeps a spatial feature map.

ImageNet models shrink their input 4x (or more) in the stem: a 7x7 stride-2 convolution and
a stride-2 max-pool in a ResNet. On 32x32 CIFAR images that leaves a 1x1 map after the last
stage. The usual CIFAR adaptation, as in the CIFAR ResNets of He et al., keeps the stem at full
resolution: a 3x3 stride-1 first convolution and no max-pool. :func:`adapt_stem` applies it to
the stems timm models expose:

- ``conv1`` + ``maxpool`` (the ResNet family, deep stems included): every stride-2
  convolution of ``conv1`` gets stride 1, a first convolution larger than 3x3 is replaced
  by a fresh 3x3 one, and ``maxpool`` is removed;
- ``stem`` (ConvNeXt, RegNet, ResNetV2, CSPNet, VoVNet, RepVGG, MetaFormer, ...): the same
  inside the module (its pools removed);
- ``conv_stem`` (EfficientNet, MobileNet, ...): its stride becomes 1.

Other architectures (a ViT's patch embedding, say) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class StemChange:
    """What :func:`adapt_stem` changed: ``replaced`` names the convolutions given fresh 3x3 weights."""

    replaced: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The changes in one phrase, e.g. ``conv1 7x7 stride 2 -> 3x3 stride 1, maxpool removed``."""
        return ", ".join(self.changes) or "nothing to change"


def stem_roots(model: nn.Module) -> list[str] | None:
    """Names of the modules that form ``model``'s stem, or ``None`` for an architecture this cannot adapt."""
    if isinstance(getattr(model, "conv1", None), nn.Module) and isinstance(getattr(model, "maxpool", None), nn.Module):
        return ["conv1", "maxpool"]
    stem = getattr(model, "stem", None)
    if isinstance(stem, nn.Module) and any(isinstance(m, nn.Conv2d) for m in stem.modules()):
        return ["stem"]
    if isinstance(getattr(model, "conv_stem", None), nn.Conv2d):
        return ["conv_stem"]
    return None


def adapt_stem(model: nn.Module) -> StemChange | None:
    """Make ``model``'s stem keep the input resolution (3x3 stride-1 first conv, no pooling); ``None`` if it cannot."""
    roots = stem_roots(model)
    if roots is None:
        return None
    change = StemChange()
    first = True
    for root in roots:
        module = model.get_submodule(root)
        if root == "maxpool" or isinstance(module, _POOLS):
            _replace(model, root, nn.Identity())
            change.changes.append(f"{root} removed")
            continue
        for name, m in list(module.named_modules()):
            full = f"{root}.{name}" if name else root
            if isinstance(m, _POOLS):
                _replace(model, full, nn.Identity())
                change.changes.append(f"{full} removed")
            elif isinstance(m, nn.Conv2d):
                _adapt_conv(model, full, m, first, change)
                first = False
    return change


def _adapt_conv(model: nn.Module, name: str, conv: nn.Conv2d, first: bool, change: StemChange) -> None:
    """Give ``conv`` stride 1; the first conv, or one whose kernel cannot be centred, becomes a fresh 3x3 conv."""
    kh, kw = conv.kernel_size
    strided = conv.stride != (1, 1)
    if (first and (kh, kw) != (3, 3)) or (strided and (kh % 2 == 0 or kw % 2 == 0)):
        fresh = nn.Conv2d(
            conv.in_channels, conv.out_channels, 3, stride=1, padding=1, groups=conv.groups, bias=conv.bias is not None
        )
        fresh.to(device=conv.weight.device, dtype=conv.weight.dtype)
        _replace(model, name, fresh)
        change.replaced.append(name)
        change.changes.append(f"{name} {kh}x{kw} stride {conv.stride[0]} -> 3x3 stride 1")
        return
    if not strided:
        return
    conv.stride = (1, 1)
    if type(conv) is nn.Conv2d:  # timm's Conv2dSame pads from the stride by itself
        conv.padding = (kh // 2 * conv.dilation[0], kw // 2 * conv.dilation[1])
    change.changes.append(f"{name} stride -> 1")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in the place of the submodule called ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def feature_map_size(model: nn.Module, image_shape: tuple[int, int, int]) -> tuple[int, int] | None:
    """Height and width of the map before global pooling for one zero image of ``image_shape``.

    Uses the model's ``forward_features`` (timm's), in eval mode and without gradients (no
    running statistic moves, no random number is drawn); ``None`` if the model has none or
    its features are not a map (a ViT's tokens). Exceptions of the forward pass propagate.
    """
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        return None
    param = next(model.parameters(), None)
    x = torch.zeros(1, *image_shape, device=param.device if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward_features(x)
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return None
    if str(getattr(model, "output_fmt", "NCHW")) == "NHWC":
        return int(out.shape[1]), int(out.shape[2])
    return int(out.shape[2]), int(out.shape[3])
