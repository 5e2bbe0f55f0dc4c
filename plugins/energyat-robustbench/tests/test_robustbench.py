"""The robustbench backbone: a randomly initialised RobustBench WideResNet saved in RobustBench's layout gives,
through energyat, exactly the logits of the package's own model; its checkpoints are read without unpickling."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import energyat_core as ea
from energyat_core.testing import TINY_ARGS, assert_one_line_error, run_cli, torch_pickle

pytest.importorskip("energyat_robustbench")
if importlib.util.find_spec("robustbench") is None:
    pytest.skip(
        "the robustbench package is not installed (pip install --no-deps robustbench==1.1.1)", allow_module_level=True
    )

#: a small WideResNet of RobustBench's own class (WRN-10-1: 78k parameters)
ARCH = "WideResNet(depth=10, widen_factor=1)"
BACKBONE = f"robustbench:{ARCH}"


def reference_wide_resnet():
    """RobustBench's ``wide_resnet`` module, loaded from the installed package's file by itself (not by the plugin)."""
    folder = Path(importlib.util.find_spec("robustbench").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(
        "reference_wide_resnet", folder / "model_zoo/architectures/wide_resnet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cli(capsys):
    """Run ``energyat ARGS`` in-process; (exit code, stdout, stderr)."""

    def run(*args):
        capsys.readouterr()
        code = run_cli(*args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random WRN-10-1 (BatchNorm statistics moved off their defaults), saved as RobustBench's files are:
    torch.save({'state_dict': ...}) with DataParallel's 'module.' prefix. Returns (path, the package's model)."""
    torch.manual_seed(0)
    model = reference_wide_resnet().WideResNet(depth=10, widen_factor=1)
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, 32, 32))  # running statistics that differ from 0/1
    model.eval()
    path = tmp_path_factory.mktemp("robustbench") / "WRN-10-1.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    # what robustbench.utils.load_model then does: strip 'module.', load strictly, eval
    reloaded = reference_wide_resnet().WideResNet(depth=10, widen_factor=1)
    saved = torch.load(path, weights_only=True)["state_dict"]
    reloaded.load_state_dict({k.removeprefix("module."): v for k, v in saved.items()})
    return path, reloaded.eval()


def test_energyat_gives_the_package_models_logits(checkpoint, tmp_path, cli):
    path, reference = checkpoint
    out = tmp_path / "wrn.safetensors"
    code, stdout, err = cli("robustbench-import", path, "--model", ARCH, "--out", out)
    assert code == 0, err
    assert err.strip().splitlines() == [f"warning: checkpoint '{path}': removed the prefix 'module.' from 46 keys"]
    model = ea.load(out, backbone=BACKBONE, dataset="synthetic")  # the file records mean 0, std 1
    assert model.mean.flatten().tolist() == [0.0] * 3 and model.std.flatten().tolist() == [1.0] * 3
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)
    assert type(model.net).__name__ == "WideResNet" and type(model.net) is not type(reference)  # the plugin's import
    # energyat eval --weights needs nothing else
    args = ("--backbone", BACKBONE, "--dataset", "synthetic", "--n", "16", "--set", "evaluator.steps=1")
    code, _, err = cli("eval", "--weights", out, *args, "--device", "cpu", "--no-sanity")
    assert code == 0, err
    report = json.loads(out.with_suffix(".eval.json").read_text())
    assert report["architecture"] == BACKBONE and 0 <= report["clean_acc"] <= 100


def test_fine_tuning_starts_from_the_checkpoint(checkpoint, tmp_path):
    path, reference = checkpoint
    run = tmp_path / "run"
    args = (*TINY_ARGS, "--backbone", BACKBONE, "--set", f"backbone.checkpoint={path}")  # --normalize: default
    assert run_cli("train", *args, "--lr", "1e-12", "--out", run) == 0
    assert torch.equal(ea.load(run).mean.flatten(), torch.zeros(3))  # nothing in front of the model
    tuned = ea.load(run)
    torch.testing.assert_close(tuned.net.conv1.weight, reference.conv1.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(tuned.net.fc.weight, reference.fc.weight, atol=1e-6, rtol=0)


def test_normalised_inputs_are_refused_in_one_line(checkpoint, tmp_path, cli):
    path, _ = checkpoint
    args = (*TINY_ARGS, "--backbone", BACKBONE, "--set", f"backbone.checkpoint={path}", "--out", tmp_path / "run")
    code, _, err = cli("train", *args, "--normalize", "0.5,0.25")  # a normalisation asked for explicitly
    *warnings, last = err.strip().splitlines()
    assert all(line.startswith("warning: ") for line in warnings)  # the fix-ups of the checkpoint
    assert_one_line_error(code, last, "not images in [0, 1]", "--normalize none")


def test_zoo_names_build_the_zoo_architecture():
    from energyat_robustbench import build_model

    with torch.device("meta"):
        carmon = build_model("Carmon2019Unlabeled", 10)
        gowal = build_model("Gowal2020Uncovering_28_10_extra", 10)  # normalises inside (mean, std of CIFAR-10)
        cifar100 = build_model("cifar100/Linf/Gowal2020Uncovering", 100)
    assert type(carmon).__name__ == "WideResNet" and hasattr(carmon, "sub_block1")
    assert type(gowal).__name__ == "DMWideResNet" and gowal.logits.out_features == 10
    assert cifar100.logits.out_features == 100


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("Rice2020Overfitting", "'Rice2020OverfittingNet', which is not a name of robustbench's architecture"),
        ("Debenedetti2022Light_XCiT-S12", "'timm.create_model', which is not a name"),
        ("WideResNet(depth=10, widen_factor=1, pretrained=True)", "downloads weights"),
        ("os.system('x')", "'os.system', which is not a name"),
        ("WideResNet(depth=__import__('os'))", "is not a literal"),
        ("cifar100/Linf/Gowal2020Uncovering", "made for 100 classes, the dataset has 10"),
        ("imagenet/Linf/Standard_R50", "not 'imagenet'"),
        ("not a model!", "neither a RobustBench model name nor an architecture call"),
        ("WideResNet(depth=11)", "could not be built (AssertionError"),
    ],
)
def test_unsupported_models_are_one_line_errors(model, needle, cli, tmp_path):
    code, _, err = cli(
        "train", *TINY_ARGS, "--backbone", f"robustbench:{model}", "--normalize", "none", "--out", tmp_path / "run"
    )
    assert_one_line_error(code, err, needle)


def test_checkpoints_are_never_unpickled(tmp_path, cli):
    marker = tmp_path / "pwned"
    bad = torch_pickle(tmp_path / "bad.pt", marker, key="state_dict")
    code, _, err = cli("robustbench-import", bad, "--model", ARCH, "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "Python objects besides tensors")
    assert not marker.exists()
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    code, _, err = cli("robustbench-import", empty, "--model", ARCH, "--out", tmp_path / "y.safetensors")
    assert_one_line_error(code, err, "holds no tensors", "'epoch'")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"conv9.weight": torch.zeros(1)}}, other)
    code, _, err = cli("robustbench-import", other, "--model", ARCH, "--out", tmp_path / "z.safetensors")
    assert_one_line_error(code, err, "does not fit the model", "missing keys")
