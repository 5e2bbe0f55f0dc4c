"""A synthetic 10-class image task in which adversarial training visibly works.

Every image carries two features of its class (after Ilyas et al., 2019, "Adversarial
examples are not bugs, they are features"):

* a **robust** feature: a colour tint of ``tint`` (0.15 by default, about 38/255) per
  channel, one corner, edge or face centre of the colour cube per class, under
  low-frequency colour clutter and pixel noise. It survives any perturbation of L-inf
  size 8/255, and a network with global pooling learns it in a few steps, but it is only
  partly predictive: in a fraction ``1 - robust_agreement`` of the images the tint is
  another class's.
* a **non-robust** feature: a faint high-frequency texture (a balanced random +-1 tile of
  ``texture_period`` pixels per class, repeated over the image) of ``texture_amplitude``
  grey levels. It is perfectly predictive but an attack with eps=8/255 can erase it and
  paint another class's texture instead.

Standard training leans on the texture, which explains every label, and so reaches a
high clean accuracy but collapses under a PGD attack at eps=8/255; adversarial training
has to use the tint and keeps close to ``robust_agreement`` accuracy under attack.
Everything is deterministic given ``seed``; the test set does not depend on ``n_train``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from energyat_core.components import Dataset
from energyat_core.data.image_data import ImageData
from energyat_core.data.seeds import seeded_generator
from energyat_core.options import option

SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10
CLASS_NAMES = [f"class{k}" for k in range(NUM_CLASSES)]
#: texture tile sides that repeat a whole number of times over an image
TEXTURE_PERIODS = tuple(p for p in range(2, SIZE + 1) if SIZE % p == 0)
CHUNK = 1000  # images generated at a time (the noise is drawn chunk by chunk: do not change)


def texture_tiles(period: int, gen: torch.Generator) -> torch.Tensor:
    """One +-1 tile [3, period, period] per class, zero-mean in every channel.

    Tiles are drawn at random and kept only if no shift or mirror image of them equals
    an earlier class's tile, so that random crops and flips of training images never
    turn one class's texture into another's.
    """
    half = (period * period) // 2
    base = torch.cat([torch.ones(half), -torch.ones(period * period - half)])
    tiles: list[torch.Tensor] = []
    seen: set[tuple[float, ...]] = set()
    while len(tiles) < NUM_CLASSES:
        order = torch.argsort(torch.rand(CHANNELS, period * period, generator=gen), dim=-1)
        tile = base[order].reshape(CHANNELS, period, period)
        variants = {
            tuple(torch.roll(t, (dy, dx), dims=(1, 2)).flatten().tolist())
            for t in (tile, tile.flip(-1))
            for dy in range(period)
            for dx in range(period)
        }
        if variants & seen:
            continue
        seen |= variants
        tiles.append(tile)
    return torch.stack(tiles)


class Synthetic(Dataset):
    """Synthetic 10-class 32x32 images with a robust and a non-robust feature per class (no download)."""

    @dataclass
    class Config:
        n_train: int = option(5000, "number of training images", ge=1)
        n_test: int = option(1000, "number of test images", ge=1)
        seed: int = option(0, "seed of the class features and of the images")
        tint: float = option(0.15, "strength of each class's colour tint, the robust feature (0-1 scale)", ge=0, le=0.5)
        robust_agreement: float = option(
            0.75, "fraction of images whose tint is their own class's (the others show another class's)", ge=0, le=1
        )
        clutter: float = option(0.1, "std of random low-frequency colour clutter added to each image", ge=0)
        noise_std: float = option(0.05, "std of per-pixel Gaussian noise", ge=0)
        texture_amplitude: int = option(
            6, "grey levels (x/255) of the non-robust high-frequency class texture; 0 disables it", ge=0, le=64
        )
        texture_period: int = option(2, "side in pixels of the repeated texture tile", choices=TEXTURE_PERIODS)

    def load(self, data_dir: str | None) -> ImageData:
        cfg = self.config
        tints, textures = self.class_patterns()
        train_x, train_y = self._images(tints, textures, cfg.n_train, "train")
        test_x, test_y = self._images(tints, textures, cfg.n_test, "test")
        return ImageData(
            train_x=train_x,
            train_y=train_y,
            test_x=test_x,
            test_y=test_y,
            num_classes=NUM_CLASSES,
            classes=list(CLASS_NAMES),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            name="synthetic",
            augment=False,  # with crop+flip a small network learns the faint texture too slowly to show the effect
        ).validate()

    def class_patterns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The class tints (float [10, 3], in {-1, 0, 1} per channel) and textures (float [10, 3, 32, 32], +-1).

        Tints are distinct corners, edge and face centres of the colour cube around grey, so
        any two classes differ by the full ``tint`` in at least one channel: far more than an
        8/255 perturbation can bridge.
        """
        cfg = self.config
        gen = seeded_generator("energyat-synthetic", cfg.seed, "patterns")
        corners = torch.tensor([p for p in itertools.product((-1.0, 0.0, 1.0), repeat=CHANNELS) if any(p)])
        tints = corners[torch.randperm(len(corners), generator=gen)[:NUM_CLASSES]]
        tiles = texture_tiles(cfg.texture_period, gen)
        textures = tiles.repeat(1, 1, SIZE // cfg.texture_period, SIZE // cfg.texture_period)
        return tints, textures

    def _images(
        self, tints: torch.Tensor, textures: torch.Tensor, n: int, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        gen = seeded_generator("energyat-synthetic", cfg.seed, split)
        # balanced labels in a random order
        y = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=gen)]
        # the tint shows the true class with probability robust_agreement, otherwise one of
        # the other nine classes: the robust feature alone cannot explain every label
        agree = torch.rand(n, generator=gen) < cfg.robust_agreement
        other = (y + torch.randint(1, NUM_CLASSES, (n,), generator=gen)) % NUM_CLASSES
        shown = torch.where(agree, y, other)
        out = torch.empty(n, CHANNELS, SIZE, SIZE, dtype=torch.uint8)
        for i in range(0, n, CHUNK):  # in chunks, to bound the memory of float temporaries
            sl = slice(i, i + CHUNK)
            m = shown[sl].shape[0]
            clutter = F.interpolate(
                torch.randn(m, CHANNELS, 4, 4, generator=gen), size=(SIZE, SIZE), mode="bilinear", align_corners=False
            )
            noise = torch.randn(m, CHANNELS, SIZE, SIZE, generator=gen)
            img = 0.5 + cfg.tint * tints[shown[sl]][:, :, None, None] + cfg.clutter * clutter + cfg.noise_std * noise
            levels = torch.round(img.clamp_(0, 1) * 255)
            levels += cfg.texture_amplitude * textures[y[sl]]
            out[sl] = levels.clamp_(0, 255).to(torch.uint8)
        return out, y.to(torch.int64)
