"""The in-memory form of every dataset: :class:`ImageData`.

Images are kept as uint8 tensors (N, C, H, W) on the CPU: a quarter of the memory of
float32, and exactly what the files hold. They become floats in [0, 1] only batch by
batch, on the device (see :class:`energyat_core.data.DeviceLoader`). Models take inputs
in [0, 1] and apply the per-channel normalisation ``mean``/``std`` themselves.

A dataset too large for memory may leave its training images on disk instead
(``imagefolder`` with ``stream``): ``train_files`` then decodes them one by one, in
DataLoader workers, ``train_y`` still holds every label, and ``train_x`` holds only a
few decoded images (a probe that gives the image shape). Code that needs all training
images at once calls :meth:`ImageData.require_in_memory` first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from energyat_core.errors import DataError

if TYPE_CHECKING:
    from energyat_core.data.image_files import ImageFiles


@dataclass
class ImageData:
    """Training and test images of one dataset, with labels and channel statistics."""

    train_x: torch.Tensor  # uint8 [N, C, H, W], CPU (with train_files: a few of them)
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
    #: the training images left on disk, decoded batch by batch (None: all of them are in train_x)
    train_files: ImageFiles | None = None

    @property
    def streamed(self) -> bool:
        """True if the training images stay on disk (``train_files``) and ``train_x`` is only a probe."""
        return self.train_files is not None

    @property
    def num_train(self) -> int:
        """Number of training images (in memory or on disk)."""
        return int(self.train_y.shape[0])

    def require_in_memory(self, what: str, fix: str = "drop --set dataset.stream=true") -> None:
        """Raise a :class:`DataError` if the training images are streamed from disk: ``what`` needs them all."""
        if self.train_files is not None:
            raise DataError(
                f"{what} needs the training images in memory, but dataset '{self.name}' streams them from disk", fix
            )

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
            raise DataError(
                f"{what} has {self.num_classes} class{'' if self.num_classes == 1 else 'es'}; a classifier needs at "
                "least 2",
                "give the dataset images of at least two classes",
            )
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
            if split == "train" and self.train_files is not None:
                if len(self.train_files) != y.shape[0]:
                    raise DataError(f"{what}: {len(self.train_files)} train files but {y.shape[0]} train labels", fix)
                if not 0 < x.shape[0] <= y.shape[0]:
                    raise DataError(f"{what}: {x.shape[0]} probe images for {y.shape[0]} streamed train images", fix)
            elif x.shape[0] != y.shape[0]:
                raise DataError(f"{what}: {x.shape[0]} {split} images but {y.shape[0]} {split} labels", fix)
            if y.shape[0] == 0:
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
        if self.train_files is not None:  # the probe only gives the shape: keep it (at most n images of it)
            return dataclasses.replace(
                self,
                train_x=self.train_x[: max(n, 1)],
                train_y=self.train_y[:n],
                train_files=self.train_files.subset(n),
            )
        return dataclasses.replace(self, train_x=self.train_x[:n], train_y=self.train_y[:n])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageData(name={self.name!r}, train={self.num_train}{' (streamed)' if self.streamed else ''}, "
            f"test={self.test_x.shape[0]}, "
            f"image={c}x{h}x{w}, num_classes={self.num_classes})"
        )
