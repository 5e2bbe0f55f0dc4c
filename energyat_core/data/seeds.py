"""Random streams that depend only on names and numbers: :func:`seeded_generator`.

A dataset's images, a loader's epoch order and a data source's draws each take their own
CPU ``torch.Generator``, seeded from a hash of what identifies them (e.g.
``("energyat-loader", seed, epoch)``), so that distinct streams never overlap and every
machine draws the same numbers.
"""

from __future__ import annotations

import hashlib

import torch


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``parts`` (distinct streams never overlap)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen
