"""Tests of energyat_core.data: datasets, the device loader, augmentation and the cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from energyat_core.data import (
    CIFAR10,
    DeviceLoader,
    ImageData,
    ImageFolder,
    Synthetic,
    crop_flip,
    default_data_dir,
    random_crop_flip,
)
from energyat_core.data import image_files as image_files_module
from energyat_core.data import imagefolder as imagefolder_module
from energyat_core.data.image_files import decode_file
from energyat_core.errors import ConfigError, DataError
from energyat_core.options import build_config

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- synthetic


def small_synthetic(**kw) -> ImageData:
    cfg = dict(n_train=200, n_test=60, seed=0)
    cfg.update(kw)
    return Synthetic(Synthetic.Config(**cfg)).load(None)


def test_synthetic_shapes_dtypes_and_balance():
    data = small_synthetic()
    assert data.train_x.shape == (200, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (60, 3, 32, 32) and data.test_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64 and data.test_y.dtype == torch.int64
    assert data.num_classes == 10 and len(data.classes) == 10
    assert len(data.mean) == 3 and len(data.std) == 3
    assert data.name == "synthetic"
    assert torch.bincount(data.train_y, minlength=10).tolist() == [20] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [6] * 10
    # labels are shuffled, not sorted by class
    assert not torch.equal(data.train_y, torch.sort(data.train_y).values)
    # images use a good part of the grey range but are not saturated
    assert 15 < data.train_x.float().std() < 80


def test_synthetic_is_deterministic():
    a, b = small_synthetic(), small_synthetic()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    other = small_synthetic(seed=1)
    assert not torch.equal(a.train_x, other.train_x)
    # the test set does not depend on the size of the training set
    bigger = small_synthetic(n_train=300)
    assert torch.equal(a.test_x, bigger.test_x) and torch.equal(a.test_y, bigger.test_y)


def test_synthetic_texture_is_the_only_difference_when_toggled():
    with_texture = small_synthetic()
    without = small_synthetic(texture_amplitude=0)
    diff = with_texture.train_x.int() - without.train_x.int()
    amplitude = Synthetic.Config().texture_amplitude
    assert 0 < diff.abs().max() <= amplitude < 8  # the non-robust feature stays below eps = 8/255


def test_synthetic_rejects_bad_options():
    with pytest.raises(ConfigError, match="robust_agreement"):
        build_config(Synthetic.Config, {"robust_agreement": 1.5}, "dataset 'synthetic'")
    with pytest.raises(ConfigError, match="texture_period"):
        build_config(Synthetic.Config, {"texture_period": 5}, "dataset 'synthetic'")


# ---------------------------------------------------------------- ImageData


def tiny_data(**changes) -> ImageData:
    data = ImageData(
        train_x=torch.zeros(6, 3, 4, 4, dtype=torch.uint8),
        train_y=torch.tensor([0, 1, 2, 0, 1, 2]),
        test_x=torch.zeros(3, 3, 4, 4, dtype=torch.uint8),
        test_y=torch.tensor([0, 1, 2]),
        num_classes=3,
        classes=["a", "b", "c"],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        name="tiny",
    )
    return dataclasses.replace(data, **changes)


def test_validate_accepts_good_data():
    data = tiny_data()
    assert data.validate() is data
    assert data.image_shape == (3, 4, 4)


def test_validate_catches_bad_labels_and_dtypes():
    with pytest.raises(DataError, match=r"label 3 is outside \[0, 3\)"):
        tiny_data(test_y=torch.tensor([0, 1, 3])).validate()
    with pytest.raises(DataError, match="label -1"):
        tiny_data(train_y=torch.tensor([0, 1, 2, 0, 1, -1])).validate()
    with pytest.raises(DataError, match="uint8"):
        tiny_data(train_x=torch.zeros(6, 3, 4, 4)).validate()
    with pytest.raises(DataError, match="int64"):
        tiny_data(train_y=torch.zeros(6, dtype=torch.int32)).validate()
    with pytest.raises(DataError, match="6 train images but 5 train labels"):
        tiny_data(train_y=torch.tensor([0, 1, 2, 0, 1])).validate()
    with pytest.raises(DataError, match="names 2 classes"):
        tiny_data(classes=["a", "b"]).validate()
    with pytest.raises(DataError, match="std"):
        tiny_data(std=(0.2, 0.2)).validate()


def test_subset_train_keeps_the_first_images():
    data = tiny_data(train_x=torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 4, 4).clone())
    sub = data.subset_train(4)
    assert sub.train_x.shape[0] == 4 and sub.train_y.tolist() == [0, 1, 2, 0]
    assert sub.train_x[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert torch.equal(sub.test_x, data.test_x)
    assert data.train_x.shape[0] == 6  # the original is untouched
    assert data.subset_train(100).train_x.shape[0] == 6


# ---------------------------------------------------------------- DeviceLoader


def indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first pixel and whose label both identify the image."""
    x = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x, torch.arange(n)


def labels_of(loader: DeviceLoader, epoch: int) -> list[list[int]]:
    return [yb.tolist() for _, yb in loader.epoch(epoch)]


def test_loader_covers_every_index_once():
    x, y = indexed(103)
    loader = DeviceLoader(x, y, 10, "cpu")
    assert len(loader) == 11
    batches = list(loader.epoch(0))
    assert len(batches) == 11
    seen = torch.cat([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(103))
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.min() >= 0.0 and xb.max() <= 1.0
        # without augmentation the image is the stored one, scaled to [0, 1]
        assert torch.allclose(xb[:, 0, 0, 0] * 255, yb.float())
    assert sum(yb.shape[0] for _, yb in batches[:-1]) == 100 and batches[-1][1].shape[0] == 3


def test_loader_drop_last_and_no_shuffle():
    x, y = indexed(103)
    loader = DeviceLoader(x, y, 10, "cpu", drop_last=True, shuffle=False)
    assert len(loader) == 10
    flat = [i for batch in labels_of(loader, 5) for i in batch]
    assert flat == list(range(100))


def test_loader_is_deterministic_per_seed_and_epoch():
    x, y = indexed(64)
    a = DeviceLoader(x, y, 16, "cpu", seed=3, augment=True)
    b = DeviceLoader(x, y, 16, "cpu", seed=3, augment=True)
    for (xa, ya), (xb, yb) in zip(a.epoch(2), b.epoch(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert labels_of(a, 2) == labels_of(a, 2)
    assert labels_of(a, 2) != labels_of(a, 3)
    assert labels_of(a, 2) != labels_of(DeviceLoader(x, y, 16, "cpu", seed=4), 2)
    # resuming in the middle of an epoch gives the remaining batches of the full epoch
    assert labels_of(a, 2)[2:] == [yb.tolist() for _, yb in a.epoch(2, start_batch=2)]


def test_loader_shards_are_disjoint_and_cover_the_epoch():
    x, y = indexed(100)
    ranks = [DeviceLoader(x, y, 8, "cpu", seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7
    shards = [{i for batch in labels_of(loader, 4) for i in batch} for loader in ranks]
    assert len(shards[0]) == len(shards[1]) == 50
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(range(100))


def test_loader_shards_have_equal_batch_counts_when_uneven():
    x, y = indexed(9)
    ranks = [DeviceLoader(x, y, 4, "cpu", rank=r, world_size=2) for r in range(2)]
    counts = [len(list(loader.epoch(0))) for loader in ranks]
    assert counts == [len(ranks[0])] * 2 == [2, 2]
    union = {i for loader in ranks for batch in labels_of(loader, 0) for i in batch}
    assert union == set(range(9))  # one image wraps around to fill the last slot


def test_loader_channels_last_and_bad_input():
    x, y = indexed(8)
    xb, _ = next(DeviceLoader(x, y, 4, "cpu", channels_last=True).epoch(0))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError, match="uint8"):
        DeviceLoader(x.float(), y, 4, "cpu")
    with pytest.raises(DataError, match="rank"):
        DeviceLoader(x, y, 4, "cpu", rank=2, world_size=2)
    with pytest.raises(DataError, match=r"DeviceLoader got 8 images but labels of shape \(7,\)"):
        DeviceLoader(x, y[:7], 4, "cpu")
    with pytest.raises(DataError, match="batch size 0"):
        DeviceLoader(x, y, 0, "cpu")


def test_loader_augmentation_matches_crop_flip():
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(32)
    loader = DeviceLoader(x, y, 32, "cpu", augment=True, seed=7)
    idx, offsets, flips = loader.epoch_indices(1)
    xb, yb = next(loader.epoch(1))
    assert torch.equal(yb, idx)
    assert torch.equal(xb, crop_flip(x[idx], offsets, flips, 4).float() / 255)
    assert offsets.min() >= 0 and offsets.max() <= 8
    assert 0 < int(flips.sum()) < 32


# ---------------------------------------------------------------- augmentation


def ramp_image() -> torch.Tensor:
    return (torch.arange(3 * 6 * 6, dtype=torch.int64) + 1).view(1, 3, 6, 6).to(torch.uint8)


def test_crop_at_centre_without_flip_is_identity():
    x = ramp_image()
    out = crop_flip(x, torch.tensor([[4, 4]]), torch.tensor([False]), padding=4)
    assert torch.equal(out, x)


def test_crop_and_flip_match_a_manual_slice():
    x = ramp_image()
    padded = torch.zeros(1, 3, 14, 14, dtype=torch.uint8)
    padded[:, :, 4:10, 4:10] = x
    expected = padded[:, :, 1:7, 6:12]
    out = crop_flip(x, torch.tensor([[1, 6]]), torch.tensor([False]), padding=4)
    assert torch.equal(out, expected)
    flipped = crop_flip(x, torch.tensor([[1, 6]]), torch.tensor([True]), padding=4)
    assert torch.equal(flipped, expected.flip(-1))
    # a shift by 3 rows down and 2 columns left of the original: zero padding comes in
    assert (out[:, :, :3, :] == 0).all() and (out[:, :, 3:, :4] != 0).all()
    assert torch.equal(out[:, :, 3:, :4], x[:, :, :3, 2:])


def test_crop_zero_padding_at_the_corner():
    x = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    out = crop_flip(x, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, True]), padding=4)
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 200).all()
    assert (out[1, :, 4:, :] == 0).all() and (out[1, :, :, :4] == 0).all()
    assert (out[1, :, :4, 4:] == 200).all()


def test_random_crop_flip_is_batched_and_reproducible():
    x = torch.rand(16, 3, 8, 8)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert not torch.equal(a, x)
    # every output image is a window of its own padded input
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        windows = {(r, c, f) for r in range(9) for c in range(9) for f in (False, True)}
        assert any(
            torch.equal(a[i], padded[i, :, r : r + 8, c : c + 8].flip(-1) if f else padded[i, :, r : r + 8, c : c + 8])
            for r, c, f in windows
        )


# ---------------------------------------------------------------- ImageFolder


COLOURS = {"b_dog": (200, 30, 30), "a_cat": (10, 220, 40)}


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_folder(root: Path, classes=COLOURS, n_train: int = 3, n_test: int = 2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in classes.items():
            for i in range(n):
                write_png(root / split / name / f"img{i}.png", colour)
    return root


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Keep every cache and default data folder of these tests inside tmp_path."""
    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENERGYAT_DATA_DIR", str(tmp_path / "data"))


def test_default_data_dir_follows_the_environment(tmp_path):
    assert default_data_dir() == tmp_path / "data"


def test_imagefolder_loads_with_sorted_class_labels(tmp_path):
    root = make_folder(tmp_path / "pics")
    data = ImageFolder(ImageFolder.Config(path=str(root))).load(None)
    assert data.classes == ["a_cat", "b_dog"] and data.num_classes == 2
    assert data.train_x.shape == (6, 3, 8, 8) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (4, 3, 8, 8)
    assert sorted(data.train_y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.train_y.tolist() != sorted(data.train_y.tolist())  # classes interleaved: the first N are a mix
    for img, label in zip(data.train_x, data.train_y, strict=True):
        assert img[:, 0, 0].tolist() == list(COLOURS[data.classes[label]])
    again = ImageFolder(ImageFolder.Config(path=str(root), cache=False)).load(None)
    assert torch.equal(again.train_y, data.train_y)  # the order is fixed
    assert data.mean[0] == pytest.approx((10 + 200) / 2 / 255)
    assert data.std[1] == pytest.approx((220 - 30) / 2 / 255)


def test_imagefolder_takes_data_dir_and_resizes(tmp_path):
    root = make_folder(tmp_path / "pics")
    write_png(root / "train" / "a_cat" / "big.png", (10, 220, 40), size=(16, 12))
    with pytest.raises(DataError, match="different sizes.*image_size"):
        ImageFolder().load(str(root))
    data = ImageFolder(ImageFolder.Config(image_size=4)).load(str(root))
    assert data.train_x.shape == (7, 3, 4, 4) and data.test_x.shape == (4, 3, 4, 4)


def test_imagefolder_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pics")
    first = ImageFolder(ImageFolder.Config(path=str(root))).load(None)
    assert list((tmp_path / "cache").glob("imagefolder-*.npz"))

    def broken(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder_module, "decode_images", broken)
    second = ImageFolder(ImageFolder.Config(path=str(root))).load(None)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.classes == second.classes and first.mean == pytest.approx(second.mean)
    # a new file changes the key: the folder is decoded again
    write_png(root / "train" / "a_cat" / "new.png", (1, 2, 3))
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(ImageFolder.Config(path=str(root))).load(None)


def test_imagefolder_decodes_in_worker_processes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pics", n_train=4, n_test=2)
    monkeypatch.setattr(image_files_module, "PARALLEL_MIN_FILES", 1)
    cfg = ImageFolder.Config(path=str(root), workers=2, cache=False)
    data = ImageFolder(cfg).load(None)
    assert sorted(data.train_y.tolist()) == [0] * 4 + [1] * 4
    for img, label in zip(data.train_x, data.train_y, strict=True):
        assert img[:, 3, 3].tolist() == list(COLOURS[data.classes[label]])
    (root / "test" / "b_dog" / "img1.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="img1.png"):
        ImageFolder(cfg).load(None)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*imagefolder:PATH"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "nowhere"))).load(None)
    with pytest.raises(DataError, match="needs a folder"):
        ImageFolder().load(None)

    root = make_folder(tmp_path / "no_test")
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    for d in (root / "test").iterdir():
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="no test/ subfolder"):
        ImageFolder().load(str(root))

    root = make_folder(tmp_path / "empty_class")
    (root / "train" / "c_empty").mkdir()
    (root / "test" / "c_empty").mkdir()
    with pytest.raises(DataError, match="c_empty holds no image files"):
        ImageFolder().load(str(root))

    root = make_folder(tmp_path / "mismatch")
    write_png(root / "test" / "z_extra" / "x.png", (0, 0, 0))
    with pytest.raises(DataError, match="different classes.*only in test: z_extra"):
        ImageFolder().load(str(root))

    root = make_folder(tmp_path / "corrupt")
    (root / "train" / "a_cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot decode image file .*broken\.png.*remove or replace"):
        ImageFolder().load(str(root))


def test_one_class_folder_is_a_data_error_with_a_fix(tmp_path):
    root = make_folder(tmp_path / "one", classes={"only": (1, 2, 3)})
    with pytest.raises(DataError, match="one class folder \\('only'\\); a classifier needs at least two") as err:
        ImageFolder().load(str(root))
    assert "bug" not in str(err.value) and "add a folder" in str(err.value)
    with pytest.raises(DataError, match="has 1 class; a classifier needs at least 2") as err:
        tiny_data(num_classes=1, classes=["a"], train_y=torch.zeros(6, dtype=torch.int64)).validate()
    assert "bug" not in str(err.value)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 255, 256, 1000, 32768, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"  # Pillow's convert("RGB") would clip it
    decoded = decode_file(tmp_path / "grey16.png", None)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert decoded.shape == (1, 8, 3) and decoded.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], expected)
    assert decoded[0, :, 0].tolist() == [0, 0, 1, 1, 4, 128, 254, 255]
    # 16-bit PGM (Pillow mode I) likewise; 32-bit and floating-point images have no fixed range
    (tmp_path / "grey16.pgm").write_bytes(b"P5\n8 1\n65535\n" + values.astype(">u2").tobytes())
    np.testing.assert_array_equal(decode_file(tmp_path / "grey16.pgm", None)[..., 0], expected)
    Image.fromarray(np.full((4, 4), 1 << 20, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide\.tif has 32-bit pixels"):
        decode_file(tmp_path / "wide.tif", None)
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif has floating-point pixels"):
        decode_file(tmp_path / "float.tif", None)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    write_png(tmp_path / "big.png", (1, 2, 3), size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow warns (over 2000 it raises)
    with pytest.raises(DataError, match=r"big\.png claims more than 1000 pixels"):
        decode_file(tmp_path / "big.png", None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"big\.png claims more than 100 pixels"):
        decode_file(tmp_path / "big.png", None)


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_without_files_or_network_is_a_data_error(tmp_path, monkeypatch):
    import torchvision

    def no_network(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        CIFAR10().load(str(empty))
    message = str(err.value)
    assert "CIFAR-10 not found in" in message and "could not be downloaded" in message
    assert "network is unreachable" in message
    assert "--data-dir" in message and "imagefolder:PATH" in message
    assert "\n" not in message

    with pytest.raises(DataError, match="download is off"):
        CIFAR10(CIFAR10.Config(download=False)).load(str(empty))


def test_cifar10_reads_an_imagefolder_copy(tmp_path):
    colours = {name: (k * 20, 255 - k * 20, 7) for k, name in enumerate(CIFAR_CLASSES)}
    root = make_folder(tmp_path / "cifar10-jpeg", classes=colours, n_train=2, n_test=1)
    for f in root.rglob("img0.png"):  # the shipped copy holds JPEGs
        Image.open(f).convert("RGB").resize((32, 32)).save(f.with_suffix(".jpg"), quality=95)
        f.unlink()
    data = CIFAR10().load(str(root))
    assert data.name == "cifar10" and data.num_classes == 10 and data.classes == CIFAR_CLASSES
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (10, 3, 32, 32)
    assert data.mean == CIFAR10.mean and data.std == CIFAR10.std
    assert sorted(data.train_y.tolist()) == [k for k in range(10) for _ in range(2)]
    for img, label in zip(data.train_x, data.train_y, strict=True):
        assert np.abs(img[:, 5, 5].numpy().astype(int) - np.array(colours[CIFAR_CLASSES[label]])).max() <= 3

    two = make_folder(tmp_path / "two-classes")
    with pytest.raises(DataError, match="2 classes, CIFAR-10 has 10"):
        CIFAR10().load(str(two))
