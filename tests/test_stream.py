"""Tests of streamed image folders: imagefolder with stream=true and the StreamingLoader."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from energyat_core.data import (
    DeviceLoader,
    ImageData,
    ImageFiles,
    ImageFolder,
    StreamingLoader,
    make_loader,
)
from energyat_core.data import imagefolder as imagefolder_module
from energyat_core.errors import DataError
from energyat_core.testing import read_metrics, run_cli

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Keep every cache of these tests inside tmp_path."""
    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENERGYAT_DATA_DIR", str(tmp_path / "data"))


def make_folder(root: Path, n_train: int = 12, n_test: int = 3) -> Path:
    """3 classes of random 8x8 RGB PNGs (every image different)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("stream") / "pics")


def load(root: Path, **options) -> ImageData:
    return ImageFolder(ImageFolder.Config(path=str(root), **options)).load(None)


def batches(loader, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch, start_batch))


def assert_same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


class Counting(torch.utils.data.Dataset):
    """``files[i]``, counting the decodes (in the main process: use workers=0)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files
        self.decoded: list[int] = []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.decoded.append(i)
        return self.files[i]


# ---------------------------------------------------------------- loading


def test_stream_keeps_the_training_images_on_disk(folder):
    memory = load(folder, cache=False)
    streamed = load(folder, cache=False, stream=True)
    assert not memory.streamed and streamed.streamed
    assert isinstance(streamed.train_files, ImageFiles) and len(streamed.train_files) == 36
    assert streamed.num_train == memory.num_train == 36
    assert torch.equal(streamed.train_y, memory.train_y)
    assert torch.equal(streamed.test_x, memory.test_x) and torch.equal(streamed.test_y, memory.test_y)
    assert streamed.image_shape == memory.image_shape == (3, 8, 8)
    assert 0 < streamed.train_x.shape[0] <= imagefolder_module.STREAM_PROBE
    assert torch.equal(streamed.train_x[0], memory.train_x[0])
    for i in (0, 17, 35):
        assert torch.equal(streamed.train_files[i], memory.train_x[i])
    copy = pickle.loads(pickle.dumps(streamed.train_files))  # what a spawned DataLoader worker gets
    assert len(copy) == 36 and torch.equal(copy[20], memory.train_x[20])
    # fewer images than the statistics sample: the statistics are those of all images
    assert streamed.mean == pytest.approx(memory.mean) and streamed.std == pytest.approx(memory.std)
    assert streamed.classes == memory.classes == list(CLASSES)
    assert "streamed" in repr(streamed)


def test_stream_statistics_come_from_an_evenly_spaced_sample(folder, monkeypatch):
    monkeypatch.setattr(imagefolder_module, "STREAM_STATS_SAMPLE", 4)
    memory = load(folder, cache=False)
    streamed = load(folder, cache=False, stream=True)
    picks = [0, 12, 23, 35]  # linspace(0, 35, 4), rounded: every class is in the sample
    expected = imagefolder_module.channel_stats(memory.train_x[picks].numpy())
    assert streamed.mean == pytest.approx(expected[0]) and streamed.std == pytest.approx(expected[1])


def test_stream_second_load_comes_from_the_cache(folder, monkeypatch):
    first = load(folder, stream=True)

    def broken(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder_module, "decode_images", broken)
    second = load(folder, stream=True)
    assert second.streamed and len(second.train_files or ()) == 36
    assert torch.equal(first.test_x, second.test_x) and torch.equal(first.train_x, second.train_x)
    assert first.mean == pytest.approx(second.mean)


def test_streamed_data_subsets_and_refuses_whole_set_users(folder):
    data = load(folder, cache=False, stream=True)
    sub = data.subset_train(10)
    assert sub.num_train == 10 and len(sub.train_files or ()) == 10
    assert torch.equal(sub.train_y, data.train_y[:10])
    assert sub.train_files is not None
    assert all(sub.train_files.path(i).parent.name == data.classes[int(sub.train_y[i])] for i in range(10))
    assert sub.validate() is sub
    assert data.num_train == 36  # the original is untouched
    with pytest.raises(DataError, match=r"per-class fit needs the training images in memory.*dataset\.stream=true"):
        data.require_in_memory("per-class fit")
    load(folder, cache=False).require_in_memory("per-class fit")  # in memory: fine
    with pytest.raises(DataError, match="36 train files but 35 train labels"):
        dataclasses.replace(data, train_y=data.train_y[:35]).validate()


# ---------------------------------------------------------------- StreamingLoader vs DeviceLoader


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_device_loader(folder, workers):
    memory = load(folder, cache=False)
    streamed = load(folder, cache=False, stream=True)
    assert streamed.train_files is not None
    for augment in (False, True):
        options = dict(seed=3, augment=augment)
        device = DeviceLoader(memory.train_x, memory.train_y, 5, "cpu", **options)
        stream = StreamingLoader(streamed.train_files, streamed.train_y, 5, "cpu", workers=workers, **options)
        assert len(stream) == len(device) == 8
        for epoch in (0, 1):  # a second pass reuses the (persistent) workers
            assert_same(batches(stream, epoch), batches(device, epoch))
        assert batches(stream, 0)[-1][1].shape == (1,)  # 36 = 7 * 5 + 1: the last batch is short
    if workers:
        assert stream._loader.persistent_workers


def test_streamed_shards_partition_the_epoch_like_the_device_loader(folder):
    memory = load(folder, cache=False).subset_train(35)  # uneven: one image wraps around
    streamed = load(folder, cache=False, stream=True).subset_train(35)
    assert streamed.train_files is not None
    seen: list[int] = []
    for rank in range(2):
        options = dict(seed=1, augment=True, rank=rank, world_size=2)
        device = DeviceLoader(memory.train_x, memory.train_y, 4, "cpu", **options)
        stream = StreamingLoader(streamed.train_files, streamed.train_y, 4, "cpu", **options)
        assert len(stream) == len(device) == 5
        assert_same(batches(stream, 2), batches(device, 2))
        idx, _, _ = stream.epoch_indices(2)
        seen += idx.tolist()
    assert len(seen) == 36 and set(seen) == set(range(35))
    drop = [
        StreamingLoader(streamed.train_files, streamed.train_y, 4, "cpu", drop_last=True, world_size=2, rank=r)
        for r in range(2)
    ]
    assert [len(loader) for loader in drop] == [4, 4]
    assert [sum(len(y) for _, y in loader.epoch(0)) for loader in drop] == [16, 16]


def test_start_batch_skips_without_decoding(folder):
    streamed = load(folder, cache=False, stream=True)
    assert streamed.train_files is not None
    counting = Counting(streamed.train_files)
    stream = StreamingLoader(counting, streamed.train_y, 5, "cpu", seed=2, augment=True)
    full = batches(stream, 4)
    counting.decoded.clear()
    rest = batches(stream, 4, start_batch=3)
    assert_same(rest, full[3:])
    idx, _, _ = stream.epoch_indices(4)
    assert counting.decoded == idx[15:].tolist()  # only the images of batches 3.. were decoded


def test_make_loader_picks_by_data(folder):
    memory = load(folder, cache=False)
    streamed = load(folder, cache=False, stream=True, workers=1)
    assert isinstance(make_loader(memory, 4, "cpu", seed=0), DeviceLoader)
    loader = make_loader(streamed, 4, "cpu", seed=0, channels_last=True)
    assert isinstance(loader, StreamingLoader) and loader.workers == 1 and len(loader) == 9
    xb, _ = batches(loader, 0)[0]
    assert xb.shape == (4, 3, 8, 8) and xb.is_contiguous(memory_format=torch.channels_last)
    loader.close()
    assert len(batches(loader, 1)) == 9  # closing stops the workers; the next epoch starts new ones


def test_streaming_loader_checks_its_input(folder):
    files = load(folder, cache=False, stream=True).train_files
    assert files is not None
    y = torch.zeros(len(files), dtype=torch.int64)
    with pytest.raises(DataError, match=r"StreamingLoader got 36 images but labels of shape \(35,\)"):
        StreamingLoader(files, y[:35], 4, "cpu")
    with pytest.raises(DataError, match="DataLoader workers"):
        StreamingLoader(files, y, 4, "cpu", workers=-1)
    with pytest.raises(DataError, match="rank"):
        StreamingLoader(files, y, 4, "cpu", rank=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_one_line_data_errors(tmp_path, workers):
    root = make_folder(tmp_path / "pics", n_train=4, n_test=1)
    data = load(root, cache=False, stream=True)
    assert data.train_files is not None
    (root / "train" / "bee" / "img02.png").write_bytes(b"not a png")
    loader = StreamingLoader(data.train_files, data.train_y, 4, "cpu", shuffle=False, workers=workers)
    with pytest.raises(DataError) as err:
        batches(loader, 0)
    assert "img02.png" in str(err.value) and "\n" not in str(err.value) and "Caught" not in str(err.value)
    Image.new("RGB", (9, 8)).save(root / "train" / "bee" / "img02.png")
    loader = StreamingLoader(data.train_files, data.train_y, 4, "cpu", shuffle=False, workers=workers)
    with pytest.raises(DataError, match=r"img02\.png is 9x8.*image_size"):
        batches(loader, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_batches_on_cuda_are_pinned_copies_of_the_device_loader(folder):
    memory = load(folder, cache=False)
    streamed = load(folder, cache=False, stream=True)
    assert streamed.train_files is not None
    options = dict(seed=5, augment=True, channels_last=True)
    device = DeviceLoader(memory.train_x, memory.train_y, 8, "cuda", **options)
    stream = StreamingLoader(streamed.train_files, streamed.train_y, 8, "cuda", workers=2, **options)
    assert stream._loader.pin_memory
    got, want = batches(stream, 0), batches(device, 0)
    assert_same(got, want)
    assert all(x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) for x, _ in got)


def test_sgld_fit_refuses_streamed_data(folder):
    sgld = pytest.importorskip("energyat_sgld.sampler")
    from energyat_core.components import RunContext

    data = load(folder, cache=False, stream=True)
    ctx = RunContext(device=torch.device("cpu"), num_classes=data.num_classes, data=data)
    with pytest.raises(DataError, match=r"init=pca .*needs the training images in memory.*init=noise"):
        sgld.SGLD(sgld.SGLDConfig(init="pca")).setup(ctx)
    noise = sgld.SGLD(sgld.SGLDConfig(init="noise"))
    noise.setup(ctx)  # noise needs only the image shape
    assert noise.init(torch.tensor([0, 2])).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- end to end


def test_train_streams_an_image_folder(folder, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", f"imagefolder:{folder}", "--set", "dataset.stream=true"]
    args += ["--set", "dataset.workers=1", "--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8"]
    args += ["--eval-n", "9", "--eval-steps", "1", "--device", "cpu", "--out", run_dir, "--quiet"]
    assert run_cli(*args) == 0
    (record,) = read_metrics(run_dir)
    assert record["epoch"] == 1 and record["step"] == 4  # 36 images, batch 8, drop_last


def test_generate_from_a_streamed_run(folder, tmp_path, cli, monkeypatch):
    """The SGLD fit and FID against every training image refuse; FID against the first N decodes them."""
    metrics_mod = pytest.importorskip("energyat_sgld.metrics")
    pytest.importorskip("torch_fidelity")
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", f"imagefolder:{folder}", "--set", "dataset.stream=true", "--set", "dataset.workers=1"]
    args += ["--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8", "--eval-n", "9", "--eval-steps", "1"]
    assert run_cli(*args, "--device", "cpu", "--out", run_dir, "--quiet") == 0

    class StandIn(torch.nn.Module):  # a tiny stand-in for the Inception network
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
            self.head = torch.nn.Linear(6, 4)

        @torch.no_grad()
        def forward(self, images):
            f = torch.tanh(self.conv(images.float() / 255)).mean(dim=(2, 3))
            return f, self.head(f)

    monkeypatch.setattr(metrics_mod, "inception_extractor", lambda weights, device: StandIn())
    common = ("generate", run_dir, "--device", "cpu", "--quiet", "--n", "12", "--steps", "1", "--batch-size", "6")
    code, _, err = cli(*common, "--out", tmp_path / "pca", "--init", "pca")
    assert code == 2 and "needs the training images in memory" in err and "init=noise" in err
    code, _, err = cli(*common, "--out", tmp_path / "all", "--init", "noise", "--metrics", "fid")
    assert code == 2 and "--real-n N" in err
    code, _, err = cli(*common, "--out", tmp_path / "ten", "--init", "noise", "--metrics", "fid", "--real-n", "10")
    assert code == 0, err
    summary = (tmp_path / "ten" / "summary.json").read_text()
    assert '"real_n": 10' in summary
