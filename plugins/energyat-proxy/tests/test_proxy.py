"""Tests of the energyat-proxy source: batch composition, sampling, memory mapping, file checks."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch

from energyat_core.api import (
    Attack,
    ConfigError,
    DataError,
    DistInfo,
    ImageData,
    RunContext,
    load_run,
)
from energyat_core.testing import (
    STATE_FILE,
    compose_config,
    fresh_registry,
    load_state,
    make_trainer,
    quick_train,
    save_state,
    train_steps,
)
from energyat_proxy.npz import load_proxy
from energyat_proxy.source import ProxySource, extra_count

C, H, W, K = 3, 8, 8, 4  # the small real dataset of the unit tests: 3x8x8 images, 4 classes


@pytest.fixture(scope="module")
def registry():
    return fresh_registry()


def coded_images(n: int, h: int = H, w: int = W, c: int = C) -> np.ndarray:
    """uint8 [n, h, w, c] images whose first two bytes spell their index and whose other pixels differ per image."""
    i = np.arange(n).reshape(n, 1, 1, 1)
    pix = np.arange(h * w * c).reshape(1, h, w, c)
    x = ((i * 37 + pix * 11) % 256).astype(np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return x


def index_of(x: torch.Tensor) -> np.ndarray:
    """Recover the indices of coded images from float NCHW batches."""
    b = (x[:, :2, 0, 0] * 255).round().long().numpy()
    return b[:, 0] + 256 * b[:, 1]


def real_data(h: int = H, w: int = W, c: int = C, k: int = K) -> ImageData:
    x = torch.zeros(8, c, h, w, dtype=torch.uint8)
    y = torch.arange(8) % k
    return ImageData(x, y, x, y, k, [f"c{i}" for i in range(k)], (0.5,) * c, (0.25,) * c, "tiny")


def context(tmp_path, seed: int = 0, data: ImageData | None = None, dist: DistInfo | None = None) -> RunContext:
    data = data or real_data()
    return RunContext(torch.device("cpu"), data.num_classes, data, tmp_path, seed=seed, dist=dist)


def save(path, compressed: bool = False, **arrays) -> str:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return str(path)


def proxy_file(tmp_path, n: int = 100, name: str = "proxy.npz", compressed: bool = False) -> str:
    return save(tmp_path / name, compressed, images=coded_images(n), labels=np.arange(n) % K)


def source(path: str, tmp_path, seed: int = 0, dist: DistInfo | None = None, **options) -> ProxySource:
    src = ProxySource(ProxySource.Config(path=path, **options))
    src.setup(context(tmp_path, seed, dist=dist))
    return src


# --- options ---------------------------------------------------------------------------------


def test_extra_count_is_ratio_times_real_rounded_half_up():
    assert extra_count(1.0, 128) == 128
    assert extra_count(1.0, 32) == 32
    assert extra_count(0.5, 32) == 16
    assert extra_count(2.0, 32) == 64
    assert extra_count(0.25, 30) == 8  # 7.5 -> 8
    assert extra_count(0.2, 32) == 6  # 6.4 -> 6
    assert extra_count(0.1, 30) == 3  # 3.0000000000000004 -> 3


def test_config_defaults_and_first_field(registry, tmp_path, monkeypatch):
    cfg = ProxySource.Config()
    assert (cfg.path, cfg.ratio, cfg.labels, cfg.pseudo_labeler, cfg.memory_budget_mb) == (
        "",
        1.0,
        "stored",
        None,
        2048,
    )
    assert dataclasses.fields(ProxySource.Config)[0].name == "path"  # what --source proxy:PATH sets
    monkeypatch.chdir(tmp_path)
    src = registry.create("source", "proxy:some/samples.npz", ratio="1/2")
    assert isinstance(src, ProxySource) and src.config.ratio == 0.5
    assert src.config.path == str(tmp_path.resolve() / "some" / "samples.npz")  # absolute: --resume from anywhere
    for f in dataclasses.fields(ProxySource.Config):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ratio": "0"}, "'ratio' must be > 0"),
        ({"ratio": "-1"}, "'ratio' must be > 0"),
        ({"ratio": "inf"}, "ratio must be a finite number"),
        ({"memory_budget_mb": "-1"}, "'memory_budget_mb' must be >= 0"),
        ({"labels": "pseudo"}, "labels=pseudo needs pseudo_labeler"),
        ({"pseudo_labeler": "runs/x"}, "only with labels=pseudo"),
        ({"labels": "generator"}, "expects one of 'stored', 'pseudo'"),
    ],
)
def test_bad_options_are_config_errors(registry, options, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("source", "proxy:p.npz", **options)
    with pytest.raises(ConfigError, match="no file of synthetic images given; use --source proxy:PATH"):
        registry.create("source", "proxy")


def test_train_flags_set_the_source_and_the_run_config_keeps_absolute_paths(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    cfg = compose_config(
        registry,
        flags={"source": "proxy:a.npz"},
        sets=["source.ratio=0.5", "source.labels=pseudo", "source.pseudo_labeler=runs/std"],
    )
    doc = cfg.to_dict()["source"]
    here = tmp_path.resolve()
    assert doc == {"name": "proxy", "path": str(here / "a.npz"), "ratio": 0.5, "labels": "pseudo",
                   "pseudo_labeler": str(here / "runs" / "std"), "memory_budget_mb": 2048}  # fmt: skip
    # config.json read back from another directory (as --resume does) still names the same files
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    monkeypatch.chdir(tmp_path / "runs")
    again = compose_config(registry, config_file=str(tmp_path / "config.json"))
    assert again.to_dict()["source"] == doc


# --- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "n_real", "n_extra"), [(1.0, 32, 32), (0.5, 32, 16), (2.0, 10, 20), (0.3, 5, 2)])
def test_batch_size_follows_the_ratio(tmp_path, ratio, n_real, n_extra):
    src = source(proxy_file(tmp_path), tmp_path, ratio=ratio)
    x, y = src.next_batch(n_real)
    assert x.shape == (n_extra, C, H, W) and x.dtype == torch.float32
    assert y.shape == (n_extra,) and y.dtype == torch.int64


def test_images_come_back_bit_exact_and_unaugmented_with_their_labels(tmp_path):
    images = coded_images(100)
    src = source(proxy_file(tmp_path), tmp_path)
    for _ in range(5):
        x, y = src.next_batch(32)
        idx = index_of(x)
        expected = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(x, expected)  # no crop, no flip, no rounding: exactly uint8 / 255
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(images[idx]).permute(0, 3, 1, 2))
        assert torch.equal(y, torch.from_numpy(idx % K))


def test_sampling_is_without_replacement_across_epochs(tmp_path):
    src = source(proxy_file(tmp_path, n=100), tmp_path, ratio=1.0)
    seen = np.concatenate([index_of(src.next_batch(10)[0]) for _ in range(25)])  # 2.5 passes
    first, second, third = seen[:100], seen[100:200], seen[200:]
    assert sorted(first) == list(range(100)) and sorted(second) == list(range(100))
    assert len(set(third)) == 50
    assert not np.array_equal(first, second)  # a fresh permutation for every pass
    # a batch that crosses the end of a pass takes the rest of the old one and the start of the new one
    src2 = source(proxy_file(tmp_path, n=100), tmp_path)
    a = np.concatenate([index_of(src2.next_batch(30)[0]) for _ in range(4)])
    assert len(set(a[:90])) == 90
    assert set(range(100)) - set(a[:90]) <= set(a[90:])  # the last 10 of pass 0 are in the 4th batch
    assert (src2.pass_index, src2.cursor) == (1, 20)


def test_ranks_share_out_the_sequence_of_a_single_process(tmp_path):
    path = proxy_file(tmp_path, n=1000)
    one = source(path, tmp_path)
    expected = [np.sort(index_of(one.next_batch(32)[0])) for _ in range(5)]  # 2 ranks x 16 per step
    ranks = [source(path, tmp_path, dist=DistInfo(rank=rank, world_size=2)) for rank in (0, 1)]
    for step in range(5):
        a, b = (index_of(r.next_batch(16)[0]) for r in ranks)
        assert len(a) == len(b) == 16 and not set(a) & set(b)
        assert np.array_equal(np.sort(np.concatenate([a, b])), expected[step])
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()


def test_order_depends_on_the_run_seed_only(tmp_path):
    path = proxy_file(tmp_path)
    a = [index_of(source(path, tmp_path, seed=0).next_batch(50)[0]) for _ in range(2)]
    b = index_of(source(path, tmp_path, seed=1).next_batch(50)[0])
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(np.sort(a[0]), np.sort(b))


def test_resume_continues_with_the_same_images(tmp_path):
    path = proxy_file(tmp_path, n=100)
    whole = source(path, tmp_path)
    expected = [whole.next_batch(32) for _ in range(12)]  # crosses three passes
    first = source(path, tmp_path)
    for _ in range(7):
        first.next_batch(32)
    save_state(tmp_path / STATE_FILE, {"components": {"source": first.state_dict()}})
    resumed = source(path, tmp_path)
    resumed.load_state_dict(load_state(tmp_path / STATE_FILE)["components"]["source"])
    for x_exp, y_exp in expected[7:]:
        x, y = resumed.next_batch(32)
        assert torch.equal(x, x_exp) and torch.equal(y, y_exp)
    other = source(proxy_file(tmp_path, n=90, name="smaller.npz"), tmp_path)
    with pytest.raises(DataError, match="trained with 100 proxy images but .* now holds 90"):
        other.load_state_dict(first.state_dict())


# --- memory mapping -------------------------------------------------------------------------


def test_images_over_the_memory_budget_are_memory_mapped(tmp_path):
    n = 3000  # 3000 * 8 * 8 * 3 bytes = 0.55 MiB
    path = proxy_file(tmp_path, n=n)
    in_memory = source(path, tmp_path, memory_budget_mb=1)
    mapped = source(path, tmp_path, memory_budget_mb=0)
    assert not isinstance(in_memory.proxy.images, np.memmap) and not in_memory.proxy.mapped
    assert isinstance(mapped.proxy.images, np.memmap) and mapped.proxy.mapped
    assert str(mapped.proxy.images.filename) == str((tmp_path / "proxy.npz").resolve())  # mapped in place, no copy
    assert np.array_equal(np.asarray(mapped.proxy.images), coded_images(n))
    for _ in range(4):
        (xa, ya), (xb, yb) = in_memory.next_batch(128), mapped.next_batch(128)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xb, torch.from_numpy(coded_images(n)[index_of(xb)]).permute(0, 3, 1, 2).float() / 255)


def test_compressed_file_over_budget_is_decompressed_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(tmp_path / "cache"))
    path = proxy_file(tmp_path, n=500, compressed=True)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("images.npy").compress_type == zipfile.ZIP_DEFLATED
    mapped = source(path, tmp_path, memory_budget_mb=0)
    assert isinstance(mapped.proxy.images, np.memmap)
    copies = list((tmp_path / "cache").glob("proxy-*.npy"))
    assert len(copies) == 1 and str(mapped.proxy.images.filename) == str(copies[0].resolve())
    assert np.array_equal(np.asarray(mapped.proxy.images), coded_images(500))
    stamp = copies[0].stat().st_mtime_ns
    again = source(path, tmp_path, memory_budget_mb=0)  # reuses the copy
    assert copies[0].stat().st_mtime_ns == stamp and list((tmp_path / "cache").glob("*")) == copies
    in_memory = source(path, tmp_path)
    for _ in range(3):
        assert torch.equal(again.next_batch(64)[0], in_memory.next_batch(64)[0])


def test_compressed_file_with_unwritable_cache_explains_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("ENERGYAT_CACHE_DIR", str(blocker / "cache"))
    path = proxy_file(tmp_path, n=50, compressed=True)
    with pytest.raises(DataError, match="compressed and larger than the memory budget .* np.savez"):
        source(path, tmp_path, memory_budget_mb=0)


# --- file validation ------------------------------------------------------------------------


def bad_file(tmp_path, case: str) -> str:
    p = tmp_path / "bad.npz"
    imgs, labels = coded_images(20), np.arange(20) % K
    if case == "missing":
        return str(tmp_path / "nope.npz")
    if case == "directory":
        return str(tmp_path)
    if case == "not-zip":
        p.write_text("images,labels\n1,2\n")
        return str(p)
    if case == "npy":
        np.save(tmp_path / "bad.npy", imgs)
        return str(tmp_path / "bad.npy")
    arrays = {
        "no-images": {"pictures": imgs, "labels": labels},
        "no-labels": {"images": imgs},
        "float-images": {"images": imgs.astype(np.float32) / 255, "labels": labels},
        "int-images": {"images": imgs.astype(np.int64), "labels": labels},
        "3d-images": {"images": imgs[..., 0], "labels": labels},
        "nchw": {"images": np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)), "labels": labels},
        "channels": {"images": imgs[..., :1], "labels": labels},
        "size": {"images": coded_images(20, h=16, w=16), "labels": labels},
        "empty": {"images": imgs[:0], "labels": labels[:0]},
        "fortran": {"images": np.asfortranarray(imgs), "labels": labels},
        "count": {"images": imgs, "labels": labels[:19]},
        "range-high": {"images": imgs, "labels": np.where(labels == 3, K, labels)},
        "range-low": {"images": imgs, "labels": labels - 1},
        "float-labels": {"images": imgs, "labels": labels.astype(np.float32)},
        "onehot-labels": {"images": imgs, "labels": np.eye(K, dtype=np.int64)[labels]},
        "object-labels": {"images": imgs, "labels": np.array([[1], [2, 3]] * 10, dtype=object)},
        "num-classes": {"images": imgs, "labels": labels, "num_classes": np.array(10)},
        "classes": {"images": imgs, "labels": labels, "classes": np.array(["a", "b", "c"])},
    }[case]
    np.savez(p, **arrays)
    return str(p)


BAD_CASES = {
    "missing": "does not exist — check the path given to --source proxy:PATH",
    "directory": "is not a file",
    "not-zip": "is not a readable .npz .* np.savez",
    "npy": "single .npy array, not an .npz",
    "no-images": r"has no images array \(it holds 'pictures'.* store the images as 'images' \(or 'x'\)",
    "no-labels": "has no labels array .* pseudo-label",
    "float-images": "are float32, not uint8 — .*astype\\(np.uint8\\)",
    "int-images": "are int64, not uint8",
    "3d-images": r"have shape \[20, 8, 8\]; expected \[N, H, W, C\] = \[N, 8, 8, 3\]",
    "nchw": r"channels-first \[20, 3, 8, 8\].*transpose\(0, 2, 3, 1\)",
    "channels": "have 1 channels but the real images have 3",
    "size": "are 16x16 but the real images are 8x8 — resize",
    "empty": "holds no images",
    "fortran": "Fortran order",
    "count": "holds 20 images but 19 labels",
    "range-high": r"proxy label 4 .* is outside \[0, 4\)",
    "range-low": r"proxy label -1 .* is outside \[0, 4\)",
    "float-labels": "are float32; integer class indices are needed",
    "onehot-labels": r"have shape \[20, 4\]; expected \[N\] — use labels.argmax\(1\)",
    "object-labels": "cannot be read",
    "num-classes": "was made for 10 classes .* real dataset has 4",
    "classes": "was made for 3 classes",
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_proxy_files_are_rejected_with_one_line_errors(tmp_path, case):
    path = bad_file(tmp_path, case)
    with pytest.raises(DataError, match=BAD_CASES[case]) as info:
        source(path, tmp_path)
    line = info.value.line()
    assert "\n" not in line and " — " in line  # problem — fix, printable on one line


def test_alternate_array_names_and_generate_format_are_accepted(tmp_path):
    imgs, labels = coded_images(20), (np.arange(20) % K).astype(np.int32)
    p = save(tmp_path / "xy.npz", x=imgs, y=labels)
    ps = load_proxy(p, image_shape=(C, H, W), num_classes=K, need_labels=True, memory_budget_mb=10)
    assert np.array_equal(ps.images, imgs) and ps.labels.dtype == np.int64 and np.array_equal(ps.labels, labels)
    # what `energyat generate` writes: images uint8 NHWC, labels, and the class names
    p = save(tmp_path / "samples.npz", images=imgs, labels=labels, classes=np.array([f"c{i}" for i in range(K)]))
    assert len(source(p, tmp_path).proxy) == 20


# --- through the engine ------------------------------------------------------------------------


class RecordingAttack(Attack):
    """Records the batches the engine attacks; returns them unchanged."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def perturb(self, model, x, y):
        self.seen.append((x.clone(), y.clone()))
        return x


@pytest.mark.parametrize(("ratio", "n_extra"), [(1.0, 32), (0.5, 16)])
def test_engine_trains_on_real_plus_proxy_images(tmp_path, registry, ratio, n_extra):
    torch.manual_seed(0)
    real = 32
    proxy = coded_images(200, h=32, w=32)
    labels = np.arange(200) % 10
    path = save(tmp_path / "proxy.npz", images=proxy, labels=labels)
    cfg = compose_config(
        registry,
        flags={"backbone": "small_cnn", "device": "cpu", "batch_size": real, "eval_n": 16, "source": f"proxy:{path}"},
        sets=["dataset.n_train=96", "dataset.n_test=16", f"source.ratio={ratio}"],
    )
    trainer = make_trainer(cfg, tmp_path / "run", registry)
    attack = RecordingAttack()
    trainer.components["attack"] = attack
    stats = train_steps(trainer)
    assert len(attack.seen) == len(trainer.loader) == 3  # an epoch is one pass over the real data
    assert stats.seen == 3 * (real + n_extra)
    proxy_x = torch.from_numpy(proxy).permute(0, 3, 1, 2).float() / 255
    in_real_part = 0
    for x, y in attack.seen:
        assert x.shape == (real + n_extra, 3, 32, 32) and y.shape == (real + n_extra,)
        idx = index_of(x)
        is_proxy = np.array([i < len(proxy) and torch.equal(x[j], proxy_x[i]) for j, i in enumerate(idx)])
        assert is_proxy.sum() == n_extra  # the proxy images, bit-exact: no augmentation
        assert np.array_equal(y[is_proxy].numpy(), labels[idx[is_proxy]])  # with their stored labels
        in_real_part += is_proxy[:real].sum()
    assert in_real_part > 0  # shuffled in with the real images, not appended after them


# --- pseudo-labels ----------------------------------------------------------------------------


def test_pseudo_labels_are_the_labellers_argmax_computed_once(tmp_path, monkeypatch):
    labeller = tmp_path / "labeller"
    quick_train(labeller, "--epochs", "1", "--set", "dataset.n_train=256", "--eval-n", "50", "--eval-steps", "1")
    images = coded_images(300, h=32, w=32)
    path = save(tmp_path / "unlabelled.npz", images=images)  # no labels at all
    model = load_run(labeller).model
    with torch.no_grad():
        expected = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert len(expected.unique()) > 1  # a test that could fail

    def pseudo_source(data=None):
        src = ProxySource(ProxySource.Config(path=path, labels="pseudo", pseudo_labeler=str(labeller)))
        src.setup(context(tmp_path / "run", data=data or real_data(h=32, w=32, k=10)))
        return src

    (tmp_path / "run").mkdir()
    src = pseudo_source()
    assert np.array_equal(src.labels, expected.numpy())
    x, y = src.next_batch(64)
    assert torch.equal(y, expected[index_of(x)])
    assert (tmp_path / "run" / "proxy_pseudo_labels.npz").is_file()

    def no_model(*args, **kwargs):
        raise AssertionError("the cached pseudo-labels should have been used")

    monkeypatch.setattr("energyat_proxy.source.load_run", no_model)
    assert np.array_equal(pseudo_source().labels, expected.numpy())  # e.g. on --resume
    monkeypatch.undo()
    with pytest.raises(DataError, match="pseudo-labeller .* has 10 classes but the real dataset has 4"):
        ProxySource(ProxySource.Config(path=path, labels="pseudo", pseudo_labeler=str(labeller))).setup(
            context(tmp_path, data=real_data(h=32, w=32, k=4))
        )
