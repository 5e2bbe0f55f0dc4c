"""Batched data augmentation on the device: random crop with zero padding and horizontal flip.

Everything is one gather over the whole batch (no Python loop over samples), so it runs
on the GPU at the cost of a copy. The random draws are separate from the gather:
:func:`draw_crop_flip` makes the offsets and flip bits with a CPU ``torch.Generator``
(reproducible whatever the device), :func:`crop_flip` applies given ones, and
:func:`random_crop_flip` does both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(
    n: int, padding: int = 4, generator: torch.Generator | None = None, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop offsets and flip bits for ``n`` images, drawn on the CPU.

    Returns ``offsets`` (int64 [n, 2]: row and column of the window's top-left corner in
    the padded image, each in ``[0, 2 * padding]``) and ``flips`` (bool [n]).
    """
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def crop_windows(
    padded: torch.Tensor, offsets: torch.Tensor, height: int, width: int, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut a ``height`` x ``width`` window out of each image of ``padded`` [B, C, H', W'].

    ``offsets`` [B, 2] holds each window's top-left (row, column); where ``flips`` is True
    the window is mirrored left-right. One advanced-indexing gather for the whole batch.
    """
    b, c = padded.shape[:2]
    dev = padded.device
    offsets = offsets.to(dev)
    rows = offsets[:, 0:1] + torch.arange(height, device=dev)  # [B, H]
    cols = torch.arange(width, device=dev).expand(b, width)  # [B, W]
    if flips is not None:
        flips = flips.to(dev)
        cols = torch.where(flips[:, None], (width - 1) - cols, cols)
    cols = offsets[:, 1:2] + cols
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Zero-pad ``x`` [B, C, H, W] by ``padding`` pixels, crop at ``offsets``, mirror where ``flips``.

    With offset (padding, padding) and no flip an image comes back unchanged. Works for
    any dtype (uint8 included); the result is contiguous and has ``x``'s shape.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    return crop_windows(padded, offsets, h, w, flips)


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip: bool = True,
    *,
    offsets: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crop with ``padding``-pixel zero padding and random horizontal flip (p=0.5).

    Draws the offsets and flips with ``generator`` (a CPU generator) unless they are
    given; see :func:`draw_crop_flip` for their format.
    """
    if offsets is None or flips is None:
        drawn_offsets, drawn_flips = draw_crop_flip(x.shape[0], padding, generator, flip)
        offsets = drawn_offsets if offsets is None else offsets
        flips = drawn_flips if flips is None else flips
    return crop_flip(x, offsets, flips, padding)
