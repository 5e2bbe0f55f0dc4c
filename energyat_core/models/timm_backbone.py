"""Any ``timm`` image model as a backbone, optionally initialised from a local weights file.

``timm`` is imported when a model is built, not when this module is imported (the
import is slow). Nothing here downloads: ``pretrained=False`` always, and pretrained
weights come only from ``pretrained_file``, read without unpickling anything but tensors.
For images of 32x32 or smaller the stem is adapted (:mod:`energyat_core.models.stem`).
Everything done to fit a weights file to the model is said in one ``warning:`` line each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from energyat_core.checkpoint import warn_lines
from energyat_core.components import Backbone, RunContext
from energyat_core.errors import ConfigError
from energyat_core.models.pretrained import load_pretrained
from energyat_core.models.stem import adapt_stem, feature_map_size
from energyat_core.options import option

#: model-name prefixes that make timm fetch a config or weights from the network
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:")
#: the largest image side for which ``small_input`` is on by default
SMALL_SIDE = 32


class TimmBackbone(Backbone):
    """Any timm model by name, e.g. ``--backbone timm:convnext_tiny``; weights only from a local file.

    The model is created with ``pretrained=False`` and ``num_classes`` of the dataset.
    ``pretrained_file`` (a .safetensors, .pth or .bin state dict) initialises it; a
    classifier head whose shape does not fit the dataset is re-initialised, and said so.
    On small images (``small_input``) the stem keeps the resolution; a model whose
    feature map before the global pool is 1x1 on the data's images is warned about.
    """

    @dataclass
    class Config:
        model: str = option("resnet18", "timm model name (see timm.list_models()), e.g. resnet18, convnext_tiny")
        pretrained_file: str | None = option(
            None, "local weights file (.safetensors, .pth or .bin) to start from; never downloaded"
        )
        in_chans: int = option(3, "input image channels", ge=1)
        drop_rate: float = option(0.0, "dropout before the classifier head (timm's drop_rate)", ge=0, lt=1)
        small_input: bool | None = option(
            None,
            "adapt the stem to small images: 3x3 stride-1 first conv, no max-pool (conv1+maxpool, stem or "
            f"conv_stem models); none: on for images of {SMALL_SIDE}x{SMALL_SIDE} or smaller",
        )

        def check(self) -> None:
            if not self.model.strip():
                raise ValueError("model must name a timm model, e.g. resnet18")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: (C, H, W) of the run's images, from :meth:`setup` (None: not known, no stem adaptation by default)
        self.image_shape: tuple[int, int, int] | None = None
        #: weights are loaded into the model right after it is built (a run read back): skip ``pretrained_file``
        self.weights_follow = False

    def setup(self, ctx: RunContext) -> None:
        """Take the image size of the run's data, and whether a weights file is loaded over the model."""
        if ctx.data is not None:
            self.image_shape = ctx.data.image_shape
        self.weights_follow = bool(ctx.extras.get("loading_weights"))

    @property
    def small_input(self) -> bool:
        """Whether the stem is adapted: the option, or (none) images no larger than 32x32."""
        if self.config.small_input is not None:
            return bool(self.config.small_input)
        return self.image_shape is not None and max(self.image_shape[1:]) <= SMALL_SIDE

    def build(self, num_classes: int) -> nn.Module:
        """The timm model: stem adapted (``small_input``), pretrained file loaded, feature map checked.

        Warnings (a stem it cannot adapt, each fix-up of the pretrained file, a 1x1 map) are
        printed as ``warning:`` lines on stderr; a build on the meta device (a size check) says
        nothing and reads no file.
        """
        c = self.config
        name = c.model.strip()
        model = _create(name, num_classes, c.in_chans, c.drop_rate)
        dry = any(p.is_meta for p in model.parameters())  # built on the meta device to size it: nothing to say
        lines: list[str] = []
        replaced: list[str] = []
        if self.small_input:
            change = adapt_stem(model)
            if change is None:
                lines.append(
                    f"timm model '{name}' has no stem energyat can adapt to small images (it knows conv1+maxpool, "
                    "stem and conv_stem models): it keeps its ImageNet stem"
                )
            else:
                replaced = change.replaced
        if c.pretrained_file and not self.weights_follow and not dry:
            lines += load_pretrained(model, c.pretrained_file, name, c.in_chans, reinit=replaced)
        if self.image_shape is not None and not dry:
            lines += self._check_feature_map(model, name)
        if not dry:
            warn_lines(lines)
        return model

    def _check_feature_map(self, model: nn.Module, name: str) -> list[str]:
        """One dummy forward at the data's size: a one-line ConfigError if it fails, a warning if the map is 1x1."""
        assert self.image_shape is not None
        c, h, w = self.image_shape
        try:
            size = feature_map_size(model, self.image_shape)
        except Exception as err:  # any layer may refuse the size or the channels
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"timm model '{name}' does not run on {c}x{h}x{w} images ({reason})",
                f"check --set backbone.in_chans (the images have {c} channels) and pick a model that takes "
                f"{h}x{w} inputs (a ViT needs its own image size), e.g. timm:resnet18",
            ) from None
        if size != (1, 1):
            return []
        fix = (
            "use larger images or a model that downsamples less"
            if self.small_input
            else "adapt the stem with --set backbone.small_input=true"
        )
        return [
            f"timm model '{name}' ends in a 1x1 feature map on {c}x{h}x{w} images (the global pool sees one "
            f"position); {fix}"
        ]


def _create(name: str, num_classes: int, in_chans: int, drop_rate: float) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)``; one-line ConfigErrors for names and options."""
    import timm  # slow import, deliberately lazy

    if name.lower().startswith(_REMOTE_PREFIXES):
        raise ConfigError(
            f"timm model '{name}' would be fetched from the Hugging Face Hub",
            "energyat does not download models; use a built-in timm architecture name and "
            "--set backbone.pretrained_file=<local weights file>",
        )
    if not timm.is_model(name):
        raise ConfigError(
            f"unknown timm model '{name}'",
            "see timm.list_models() for names, e.g. timm:resnet18",
        )
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans}
    if drop_rate > 0:
        kwargs["drop_rate"] = drop_rate
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        raise ConfigError(
            f"timm model '{name}' does not accept these options ({err})",
            "leave drop_rate at 0 or pick another model",
        ) from None
