"""``energyat export``: one round trip per format (the file, loaded by the target library with the sidecar's
own lines, gives the run's logits on [0, 1] images within 1e-5), and the refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import energyat_core as ea
from energyat_core.testing import TINY_ARGS, assert_one_line_error, run_cli

#: TINY_ARGS with fewer images: one training step (a 64-wide ResNet-18 is slow on a CPU)
ONE_STEP = ("--set", "dataset.n_train=16", "--set", "dataset.n_test=8", "--batch-size", "16", "--eval-n", "8")


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs: small_cnn, core's resnet18 and timm's test_resnet (its stem adapted to 32x32)."""
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for name, backbone in (("cnn", "small_cnn"), ("resnet", "resnet18"), ("timm", "timm:test_resnet")):
        out[name] = root / name
        assert run_cli("train", *TINY_ARGS, *ONE_STEP, "--backbone", backbone, "--out", out[name]) == 0
    return out


def _round_trip(cli, monkeypatch, run: Path, fmt: str, out: Path) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Export, run the sidecar's loading lines in the file's folder; (sidecar, their logits, the run's logits)."""
    code, stdout, err = cli("export", run, "--format", fmt, "--out", out)
    assert code == 0, err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["format"] == fmt and sidecar["file"] == out.name and str(out) in stdout.replace("\n", "")
    assert sidecar["input"]["shape"] == ["N", 3, 32, 32] and sidecar["input"]["range"] == [0, 1]
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # another batch size than the trace's
    monkeypatch.chdir(out.parent)
    scope: dict = {"x": x}
    exec("\n".join(sidecar["load"]), scope)  # the lines a user copies, as written
    with torch.no_grad():
        want = ea.load(run)(x)
        got = torch.as_tensor(scope["logits"])
    return sidecar, got, want


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(runs, cli, monkeypatch, tmp_path):
    sidecar, got, want = _round_trip(cli, monkeypatch, runs["cnn"], "torchscript", tmp_path / "cnn.pt")
    assert sidecar["normalization"]["included"] is True
    assert sidecar["check"]["max_abs_logit_diff"] <= 1e-5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.skipif(not _have("onnx", "onnxscript", "onnxruntime"), reason="needs onnx, onnxscript and onnxruntime")
def test_onnx_round_trip(runs, cli, monkeypatch, tmp_path):
    sidecar, got, want = _round_trip(cli, monkeypatch, runs["cnn"], "onnx", tmp_path / "cnn.onnx")
    assert sidecar["normalization"]["included"] is True
    import onnx

    graph = onnx.load(str(tmp_path / "cnn.onnx")).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_timm_round_trip_with_the_adapted_stem(runs, cli, monkeypatch, tmp_path):
    sidecar, got, want = _round_trip(cli, monkeypatch, runs["timm"], "timm", tmp_path / "tiny.safetensors")
    load = sidecar["load"]
    assert "model = timm.create_model('test_resnet', num_classes=10, pretrained=False)" in load
    # the stem adapted to 32x32 images, rebuilt by plain torch.nn lines
    assert any(
        line.startswith("model.conv1[0] = torch.nn.Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1)") for line in load
    )
    assert "model.maxpool = torch.nn.Identity()" in load
    model = ea.load(runs["timm"])
    # energyat reads the file back too: the normalisation is recorded in its metadata
    again = ea.load(tmp_path / "tiny.safetensors", backbone="timm:test_resnet", dataset="synthetic")
    assert again.mean.flatten().tolist() == model.mean.flatten().tolist()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)
    assert sidecar["normalization"] == {
        "included": False,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "applied_as": "(x - mean) / std, per channel; by the last line of `load`",
    }
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_torchvision_round_trip_of_the_cifar_resnet18(runs, cli, monkeypatch, tmp_path):
    sidecar, got, want = _round_trip(cli, monkeypatch, runs["resnet"], "torchvision", tmp_path / "tv.safetensors")
    assert sidecar["load"][4:7] == [
        "model = torchvision.models.get_model('resnet18', weights=None, num_classes=10)",
        "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)",
        "model.maxpool = torch.nn.Identity()",
    ]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_default_file_goes_to_the_run_export_folder(runs, cli):
    code, _, err = cli("export", runs["cnn"], "--format", "torchscript", "--overwrite")
    assert code == 0, err
    assert (runs["cnn"] / "export" / "torchscript.pt").is_file()
    assert json.loads((runs["cnn"] / "export" / "torchscript.json").read_text())["backbone"] == "small_cnn"


def test_a_format_that_does_not_apply_names_those_that_do(runs, cli, tmp_path):
    code, _, err = cli("export", runs["cnn"], "--format", "timm", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "format 'timm' does not apply to backbone 'small_cnn'", "torchscript, onnx")
    code, _, err = cli("export", runs["cnn"], "--format", "torchvision", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "format 'torchvision' does not apply", "torchscript, onnx")
    code, _, err = cli("export", runs["resnet"], "--format", "timm", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "does not apply", "torchvision, torchscript, onnx")
    code, _, err = cli("export", runs["cnn"], "--format", "keras")
    assert_one_line_error(code, err, "unknown export format 'keras'", "timm, torchvision, torchscript, onnx")
    assert not (tmp_path / "x.safetensors").exists()


def test_refuses_to_replace_files(runs, cli, tmp_path):
    out = tmp_path / "m.pt"
    assert cli("export", runs["cnn"], "--format", "torchscript", "--out", out)[0] == 0
    code, _, err = cli("export", runs["cnn"], "--format", "torchscript", "--out", out)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert cli("export", runs["cnn"], "--format", "torchscript", "--out", out, "--overwrite")[0] == 0
    before = (runs["cnn"] / "model.safetensors").read_bytes()
    for own in ("model.safetensors", "config.pt"):  # the file itself, or its sidecar (config.json)
        code, _, err = cli("export", runs["cnn"], "--format", "torchscript", "--out", runs["cnn"] / own, "--overwrite")
        assert_one_line_error(code, err, "would replace the run's own file")
    assert (runs["cnn"] / "model.safetensors").read_bytes() == before
    code, _, err = cli("export", runs["cnn"], "--format", "torchscript", "--out", tmp_path / "m.json")
    assert_one_line_error(code, err, "ends in .json")
