"""Checkpoints: nested state round trips, atomic writes, and one-line errors for bad files."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from energyat_core import checkpoint as ckpt
from energyat_core.errors import CheckpointError
from energyat_core.models import Classifier, SmallCNN


def _model(classes=10):
    torch.manual_seed(0)
    return Classifier(SmallCNN().build(classes), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_nested_state_round_trip_keeps_types(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3, "tup": (1, 2.5, None, "x")}
    ckpt.save_state(tmp_path / "s.safetensors", state)
    back = ckpt.load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["tup"] == (1, 2.5, None, "x")
    assert torch.equal(back["rng"], state["rng"])
    assert set(back["optimizer"]["state"]) == set(state["optimizer"]["state"])  # int keys stay ints
    opt2 = torch.optim.Adam(_model().parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)


def test_atomic_save_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    ckpt.save_model(path, _model(), {"epoch": 1})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        ckpt.save_model(path, _model(), {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_save_writes_with_the_umask_permissions(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_model(path, _model(), {"epoch": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not the 0600 of a temporary file
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_model(path, _model(), {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as err:
        ckpt.read_safetensors(path)
    assert "\n" not in str(err.value)


def test_pickle_file_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ckpt.read_safetensors(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.read_safetensors(tmp_path / "nope.safetensors")


def test_class_count_mismatch_is_named():
    state = _model(classes=100).state_dict()
    with pytest.raises(CheckpointError, match="has 100 classes .* the model 10"):
        ckpt.load_weights(_model(classes=10), state, "ckpt")


def test_architecture_mismatch_is_named():
    from energyat_core.models import PreActResNet18

    other = Classifier(PreActResNet18().build(10), (0.5,) * 3, (0.25,) * 3).state_dict()
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        ckpt.load_weights(_model(), other, "ckpt")


def test_plain_backbone_state_dict_and_prefixes_load():
    src = _model()
    plain = {f"module._orig_mod.{k}": v for k, v in src.net.state_dict().items()}
    dst = _model()
    for p in dst.parameters():
        p.data.zero_()
    ckpt.load_weights(dst, plain, "plain")
    x = torch.rand(2, 3, 32, 32)
    src.eval()
    dst.eval()
    assert torch.allclose(src(x), dst(x))


def test_a_run_reads_back_without_its_training_plugins(tmp_path):
    from safetensors import safe_open

    from energyat_core.saved_run import load_run, load_weights_file
    from energyat_core.testing import compose_config, fresh_registry, make_trainer

    registry = fresh_registry()
    flags = {"method": "noise-at", "backbone": "small_cnn", "epochs": 1, "device": "cpu", "eval_n": 20, "eval_steps": 1}
    cfg = compose_config(registry, flags=flags, sets=["dataset.n_train=64", "dataset.n_test=20", "backbone.width=8"])
    make_trainer(cfg, tmp_path / "run", registry).fit()
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["backbone"], meta["dataset"], meta["epoch"]) == ("small_cnn", "synthetic", "1")
    assert json.loads(meta["config"]) == json.loads((tmp_path / "run" / "config.json").read_text()) == cfg.to_dict()

    without = fresh_registry({"example"})  # no attack 'noise' here
    run = load_run(tmp_path / "run", registry=without)
    assert run.cfg.spec("attack") == "noise" and run.cfg.parts["backbone"].options["width"] == 8
    assert not run.model.training and run.data.num_classes == 10
    other = load_run(tmp_path / "run", which="best", registry=without, dataset="synthetic", data_dir="elsewhere")
    assert other.cfg.parts["dataset"].options["n_train"] == 5000 and other.cfg.data_dir == "elsewhere"  # defaults

    plain = load_weights_file(
        tmp_path / "run" / "model.safetensors",
        backbone="small_cnn",
        dataset="synthetic",
        registry=without,
        backbone_options={"width": 8},
    )
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(plain.model(x), run.model(x))
    with pytest.raises(CheckpointError, match=r"has shape \(8, 3, 3, 3\) at 'net.body.0.weight', the model \(16,"):
        load_weights_file(tmp_path / "run" / "model.safetensors", backbone="small_cnn", dataset="synthetic")
