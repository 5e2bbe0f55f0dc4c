"""The in-memory form of every dataset: :class:`ImageData`.

Images are kept as uint8 tensors (N, C, H, W) on the CPU: a quarter of the memory of
float32, and exactly what the files hold. They become floats in [0, 1] only batch by
batch, on the device (see :class:`energyat_core.data.DeviceLoader`). Models take inputs
in [0, 1] and apply the per-channel normalisation ``mean``/``std`` themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from energyat_core.errors import DataError


@dataclass
class ImageData:
    """Training and test images of one dataset, with labels and channel statistics."""

    train_x: torch.Tensor  # uint8 [N, C, H, W], CPU
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M, C, H, W], CPU
    test_y: torch.Tensor  # int64 [M]
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    name: str
    #: whether random crop + flip suits this data when the run does not say (--augment/--no-augment)
    augment: bool = True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def validate(self) -> ImageData:
        """Check dtypes, shapes, label range and statistics; raise :class:`DataError` if wrong.

        Returns ``self`` so that a loader can end with ``return ImageData(...).validate()``.
        """
        what = f"dataset '{self.name}'"
        fix = "this is a bug in the dataset's loader; report it with the dataset name"
        if self.num_classes < 2:
            raise DataError(f"{what} has {self.num_classes} classes, at least 2 are needed", fix)
        if len(self.classes) != self.num_classes:
            raise DataError(f"{what} names {len(self.classes)} classes but has num_classes={self.num_classes}", fix)
        shape: tuple[int, ...] | None = None
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
                got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"{what}: {split} images must be a uint8 tensor [N, C, H, W], got {got}", fix)
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise DataError(f"{what}: {split} labels must be an int64 tensor [N], got {got}", fix)
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{what}: {x.shape[0]} {split} images but {y.shape[0]} {split} labels", fix)
            if x.shape[0] == 0:
                raise DataError(f"{what} has no {split} images", "add images to the dataset")
            if x.device.type != "cpu" or y.device.type != "cpu":
                raise DataError(f"{what}: {split} tensors must be on the CPU", fix)
            if shape is not None and tuple(x.shape[1:]) != shape:
                raise DataError(
                    f"{what}: train images are {shape} but test images are {tuple(x.shape[1:])}",
                    "give train and test images the same size and channels",
                )
            shape = tuple(x.shape[1:])
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"{what}: {split} label {bad} is outside [0, {self.num_classes})",
                    "labels must be class indices 0..num_classes-1",
                )
        assert shape is not None
        channels = shape[0]
        for stat_name, stat in (("mean", self.mean), ("std", self.std)):
            if len(stat) != channels:
                raise DataError(f"{what}: {stat_name} has {len(stat)} values for {channels} channels", fix)
        if any(s <= 0 for s in self.std):
            raise DataError(f"{what}: std {tuple(self.std)} has a value <= 0", fix)
        return self

    def subset_train(self, n: int) -> ImageData:
        """A copy that keeps only the first ``n`` training images (all of them if ``n`` is larger)."""
        if n < 0:
            raise DataError(f"cannot keep {n} training images", "pass a number of images >= 0")
        return dataclasses.replace(self, train_x=self.train_x[:n], train_y=self.train_y[:n])

    def subset_test(self, n: int) -> ImageData:
        """A copy that keeps only the first ``n`` test images (all of them if ``n`` is larger)."""
        if n < 0:
            raise DataError(f"cannot keep {n} test images", "pass a number of images >= 0")
        return dataclasses.replace(self, test_x=self.test_x[:n], test_y=self.test_y[:n])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageData(name={self.name!r}, train={self.train_x.shape[0]}, test={self.test_x.shape[0]}, "
            f"image={c}x{h}x{w}, num_classes={self.num_classes})"
        )
