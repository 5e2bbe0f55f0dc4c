"""Nothing is unpickled on the way to FID/IS, and `energyat generate` refuses crafted files.

A crafted pickle creates a marker file when unpickled (checked to be live first). It is
handed to every file `energyat generate` takes: ``--inception-weights`` (.pth, raw pickle,
.safetensors), the Inception file in torch's hub cache, the run's and the judge's
weights, the cached SGLD start statistics. The marker never appears; a file that cannot
be used ends the command with one line ``error: ...`` (exit code 2).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import types

import pytest
import torch

pytest.importorskip("torch_fidelity")

import torch_fidelity.feature_extractor_inceptionv3 as inception  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from energyat_core import testing  # noqa: E402
from energyat_core.testing import TINY_ARGS as TINY  # noqa: E402
from energyat_core.testing import raw_pickle, run_cli  # noqa: E402
from energyat_sgld import metrics as metrics_mod  # noqa: E402
from energyat_sgld.metrics import MetricsError, build_inception, inception_extractor, load_inception  # noqa: E402

GENERATE = ("--n", "4", "--steps", "1", "--init", "noise", "--device", "cpu", "--quiet")


def torch_pickle(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    return testing.torch_pickle(path, marker, key="fc.weight")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture(autouse=True)
def hub(tmp_path, monkeypatch):
    """An empty hub cache of our own, and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert pathlib.Path(torch.hub.get_dir()).is_relative_to(tmp_path)

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def inception_state():
    """A randomly initialised InceptionV3 state dict with the keys and shapes of torch-fidelity's file."""
    cls = inception.FeatureExtractorInceptionV3
    load = cls.load_state_dict
    cls.load_state_dict = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        with metrics_mod._weights_handed_over(inception, {}):
            net = cls("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        cls.load_state_dict = load  # type: ignore[method-assign]
    # like the real file (a dict of float32 tensors converted from TensorFlow): no num_batches_tracked
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_pth_safetensors_and_cached_weights_give_the_same_network(tmp_path, hub, inception_state):
    unsafe_load, hub_loader = torch.load, inception.load_state_dict_from_url
    torch.save(inception_state, tmp_path / "w.pth")  # what torch-fidelity's converter writes
    save_file(inception_state, str(tmp_path / "w.safetensors"))
    hub.mkdir(parents=True)
    shutil.copy(tmp_path / "w.pth", metrics_mod.inception_cache_file())
    for weights in (tmp_path / "w.pth", tmp_path / "w.safetensors", None):  # None: the hub cache, no download
        net = load_inception(weights)
        assert isinstance(net, inception.FeatureExtractorInceptionV3) and not net.training
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in inception_state.items())
    assert torch.load is unsafe_load and inception.load_state_dict_from_url is hub_loader  # put back


def test_a_missing_cache_file_is_downloaded_with_its_hash_checked(hub, inception_state, monkeypatch):
    seen = {}

    def download(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, hash_prefix=hash_prefix)
        torch.save(inception_state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    load_inception(None)
    assert seen == {"url": inception.URL_INCEPTION_V3, "hash_prefix": "6726825d"}
    assert metrics_mod.inception_cache_file().parent == hub and metrics_mod.inception_cache_file().is_file()


@pytest.mark.parametrize("make", [torch_pickle, raw_pickle])
@pytest.mark.parametrize("name", ["w.pth", "w.safetensors", "w.bin"])
def test_crafted_weights_file_is_refused(tmp_path, marker, make, name):
    path = make(tmp_path / name, marker)
    with pytest.raises(MetricsError) as err:
        inception_extractor(path, torch.device("cpu"))
    line = err.value.line()
    assert not marker.exists()
    assert str(path) in line and "--inception-weights" in line and "\n" not in line and "\x1b" not in line
    if not name.endswith(".safetensors"):
        assert "Python objects besides tensors, which are never unpickled" in line


def test_crafted_cache_file_is_refused_and_its_deletion_suggested(hub, marker):
    hub.mkdir(parents=True)
    cached = torch_pickle(metrics_mod.inception_cache_file(), marker)
    with pytest.raises(MetricsError) as err:
        inception_extractor(None, torch.device("cpu"))
    assert not marker.exists()
    assert f"delete {cached}" in err.value.line()


def test_state_dicts_that_do_not_fit_are_one_line_errors(tmp_path, inception_state):
    cases = {
        "list.pth": [torch.zeros(1)],
        "empty.pth": {},
        "ints.pth": {**inception_state, "fc.bias": torch.zeros(1008, dtype=torch.int8)},
        "keys.pth": {"conv.weight": torch.zeros(3)},
        "shape.pth": {**inception_state, "fc.bias": torch.zeros(10)},
    }
    expected = {
        "list.pth": "does not hold a state dict",
        "empty.pth": "does not hold a state dict",
        "ints.pth": "InceptionV3 weight 'fc.bias' .* is torch.int8, not floating point",
        "keys.pth": "is not a usable InceptionV3 weights file",
        "shape.pth": "is not a usable InceptionV3 weights file",
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(MetricsError, match=expected[name]) as err:
            load_inception(tmp_path / name)
        assert "\n" not in err.value.line()
    with pytest.raises(MetricsError, match="is not a file"):
        load_inception(tmp_path)


def test_a_torch_fidelity_that_loads_weights_itself_is_refused(tmp_path, marker):
    """Should another version unpickle some other way, the guard stops it instead of running it."""
    path = torch_pickle(tmp_path / "w.pth", marker)
    unsafe_load = torch.load

    class LoadsItself(torch.nn.Module):
        def __init__(self, name, features):
            super().__init__()
            torch.load(path, weights_only=False)

    class IgnoresTheHandOver(torch.nn.Module):
        def __init__(self, name, features):
            super().__init__()

    for cls in (LoadsItself, IgnoresTheHandOver):
        fake = types.SimpleNamespace(FeatureExtractorInceptionV3=cls, load_state_dict_from_url=None)
        with pytest.raises(MetricsError, match="torch-fidelity version") as err:
            build_inception(fake, {}, "weights", "fix")
        assert "pip install 'energyat-sgld[metrics]'" in err.value.line()
        assert not marker.exists() and torch.load is unsafe_load and fake.load_state_dict_from_url is None


# --- through `energyat generate` ------------------------------------------------------------


@pytest.fixture
def cli(capsys):
    """Run ``energyat ARGS`` in-process; (exit code, stdout, stderr)."""

    def call(*args):
        capsys.readouterr()
        code = run_cli(*args)
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("weights-only") / "run"
    assert run_cli("train", *TINY, "--out", run_dir) == 0
    return run_dir


def refused(cli_result, marker, out):
    code, _, err = cli_result
    lines = [line for line in err.splitlines() if line.strip()]
    assert not marker.exists(), "the crafted pickle was unpickled"
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not out.exists()  # refused before sampling
    return lines[0]


@pytest.mark.parametrize("make", [torch_pickle, raw_pickle])
@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
def test_generate_refuses_crafted_inception_weights(cli, run, tmp_path, marker, make, name):
    weights, out = make(tmp_path / name, marker), tmp_path / "out"
    args = ("generate", run, *GENERATE, "--out", out, "--metrics", "fid,is", "--inception-weights", weights)
    line = refused(cli(*args), marker, out)
    assert "InceptionV3 weights" in line


def test_generate_refuses_a_crafted_cache_file(cli, run, tmp_path, hub, marker):
    hub.mkdir(parents=True)
    torch_pickle(metrics_mod.inception_cache_file(), marker)
    out = tmp_path / "out"
    line = refused(cli("generate", run, *GENERATE, "--out", out, "--metrics", "fid"), marker, out)
    assert "delete" in line


@pytest.mark.parametrize("role", ["run", "judge"])
def test_generate_refuses_a_run_whose_weights_are_a_pickle(cli, run, tmp_path, marker, role):
    crafted = tmp_path / "crafted"
    shutil.copytree(run, crafted)
    torch_pickle(crafted / "model.safetensors", marker)
    out = tmp_path / "out"
    args = (crafted,) if role == "run" else (run, "--judge", crafted)
    line = refused(cli("generate", *args, *GENERATE, "--out", out), marker, out)
    assert "model.safetensors" in line


def test_generate_refits_when_the_cached_start_statistics_are_a_pickle(cli, run, tmp_path, marker):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    torch_pickle(copy / "sgld_init_pca.safetensors", marker)
    code, _, err = cli("generate", copy, "--n", "4", "--steps", "1", "--init", "pca", "--device", "cpu", "--quiet")
    assert not marker.exists()
    assert code == 0, err  # an unreadable cache is fitted again and overwritten


def test_generate_with_good_weights_computes_the_inception_score(cli, run, tmp_path, inception_state):
    """Good weights pass end to end (IS only: FID's 2048x2048 matrix square root is slow on a CPU,
    and its formula is tested with a stand-in network in test_metrics.py)."""
    save_file(inception_state, str(tmp_path / "w.safetensors"))
    out = tmp_path / "out"
    args = ("--n", "2", "--metrics", "is", "--inception-weights", tmp_path / "w.safetensors")
    code, _, err = cli("generate", run, *GENERATE, "--out", out, *args)
    assert code == 0, err
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert set(metrics) == {"is_mean", "is_std"} and metrics["is_mean"] >= 1 - 1e-9  # no FID, no reference set
