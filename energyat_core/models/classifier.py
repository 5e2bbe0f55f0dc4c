"""The model core trains: a backbone network behind the run's input normalisation (``--normalize``, docs/models.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from energyat_core.components import Backbone


class Classifier(nn.Module):
    """A backbone network that takes images in [0,1] and normalises them itself.

    ``forward(x)`` returns ``net((x - mean) / std)``. ``mean`` and ``std`` are persistent
    buffers of shape (1, C, 1, 1), so a checkpoint carries the normalisation it was
    trained with and attacks always work in the [0,1] pixel space.

    A compiled version of the forward pass can be attached with :meth:`set_compiled`; it
    is kept outside the module tree, so ``state_dict`` keys are the same whether or not
    the model is compiled.
    """

    mean: torch.Tensor
    std: torch.Tensor
    _compiled: Callable[[torch.Tensor], torch.Tensor] | None
    _compiled_takes_normalised: bool

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if mean_t.numel() == 0:
            raise ValueError("mean and std need one value per input channel")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.net = net
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        # not a submodule: assigned around nn.Module.__setattr__
        object.__setattr__(self, "_compiled", None)
        object.__setattr__(self, "_compiled_takes_normalised", False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs in [0,1] to the backbone's input space."""
        return (x - self.mean) / self.std

    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The uncompiled forward pass; compile this one (``torch.compile(clf.forward_eager)``)."""
        return self.net(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``x`` in [0,1], shape (N, C, H, W) -> (N, num_classes)."""
        compiled = self._compiled
        if compiled is None:
            return self.forward_eager(x)
        if self._compiled_takes_normalised:
            return compiled(self.normalise(x))
        return compiled(x)

    def set_compiled(self, compiled_fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Use ``compiled_fn`` for the forward pass (``None`` goes back to eager).

        ``compiled_fn`` maps images in [0,1] to logits, typically
        ``torch.compile(clf.forward_eager)``. A compiled ``clf.net`` is recognised and
        given normalised inputs instead. The callable is not registered as a submodule,
        so parameters, buffers and ``state_dict`` keys do not change.
        """
        takes_normalised = False
        if compiled_fn is not None:
            inner = getattr(compiled_fn, "_orig_mod", compiled_fn)
            if inner is self:
                raise ValueError(
                    "set_compiled got the Classifier itself, which would call itself forever; "
                    "pass torch.compile(classifier.forward_eager) instead"
                )
            takes_normalised = inner is self.net
        object.__setattr__(self, "_compiled", compiled_fn)
        object.__setattr__(self, "_compiled_takes_normalised", takes_normalised)

    def __getstate__(self) -> dict:
        # copies (deepcopy for an EMA model, pickling) start eager: a compiled callable
        # is bound to the original module's weights
        state = self.__dict__.copy()
        state["_compiled"] = None
        state["_compiled_takes_normalised"] = False
        return state

    @property
    def compiled(self) -> bool:
        """Whether a compiled forward pass is in use."""
        return self._compiled is not None


def build_classifier(backbone: Backbone, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> Classifier:
    """Build ``backbone`` for ``num_classes`` classes and wrap it with the normalisation ``mean``/``std``."""
    return Classifier(backbone.build(num_classes), mean, std)
