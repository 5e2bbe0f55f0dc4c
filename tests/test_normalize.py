"""Normalisation is explicit: ``--normalize dataset|none|MEAN,STD``, recorded in the run and read back from files.

And every fix-up made to fit a weights file to the model (a wrapper prefix removed, a precision
converted, the dataset's statistics assumed) is one ``warning:`` line, printed once the load worked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from energyat_core import checkpoint as ckpt
from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.models import Classifier, SmallCNN
from energyat_core.models.normalization import check_normalize, recorded_normalization, resolve_normalize
from energyat_core.saved_run import load_run, load_weights_file
from energyat_core.testing import TINY_ARGS, assert_one_line_error, run_cli

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
QUICK_EVAL = ("--n", "8", "--no-sanity", "--set", "evaluator.pgd.steps=1", "--device", "cpu")


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


# -- the setting --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("dataset", "dataset"),
        (" None ", "none"),
        ("0.5,0.25", "0.5,0.25"),
        ("1/2, 1/4", "0.5,0.25"),
        ("0.4,0.5,0.6,0.2,0.3,0.4", "0.4,0.5,0.6,0.2,0.3,0.4"),
    ],
)
def test_the_forms_it_takes(text, canonical):
    assert check_normalize(text) == canonical


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0.5", "1 values"),
        ("0.5,0.5,0.25", "3 values"),
        ("imagenet", "normalize takes dataset, none, or MEAN,STD"),
        ("0.5,nan", "normalize takes"),
        ("0.5,0", "every std > 0"),
        ("0.5,0.5,0.25,-0.1", "every std > 0"),
        ("", "0 values"),
    ],
)
def test_malformed_values_are_refused_in_one_line(text, needle):
    with pytest.raises(ValueError, match=needle):
        check_normalize(text)


def test_resolve_against_the_data():
    assert resolve_normalize("dataset", CIFAR_MEAN, CIFAR_STD) == (CIFAR_MEAN, CIFAR_STD)
    assert resolve_normalize("none", CIFAR_MEAN, CIFAR_STD) == ((0.0,) * 3, (1.0,) * 3)
    assert resolve_normalize("0.5,0.25", CIFAR_MEAN, CIFAR_STD) == ((0.5,) * 3, (0.25,) * 3)
    assert resolve_normalize("0.5,0.25", (0.1,), (0.2,)) == ((0.5,), (0.25,))
    assert resolve_normalize("0.1,0.2,0.3,1,2,3", CIFAR_MEAN, CIFAR_STD) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match=r"gives 6 values \(3 channels\), the images have 1 channels") as info:
        resolve_normalize("0.1,0.2,0.3,1,2,3", (0.1,), (0.2,))
    assert "2 values" in info.value.fix and "\n" not in str(info.value)


def test_a_bad_value_of_the_run_setting_is_one_error_line(cli, tmp_path):
    code, _, err = cli("train", *TINY_ARGS, "--normalize", "0.5,0.25,1", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "normalize takes", "3 values")
    assert not (tmp_path / "run").exists()


# -- a run records it ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs: one with the dataset's statistics (the default), one with --normalize 0.5,0.25."""
    root = tmp_path_factory.mktemp("normalize")
    out = {}
    for name, extra in (("dataset", ()), ("fixed", ("--normalize", "0.5,0.25"))):
        assert run_cli("train", *TINY_ARGS, *extra, "--out", root / name) == 0
        out[name] = root / name
    return out


def test_a_run_stores_the_setting_and_the_statistics(runs):
    fixed = runs["fixed"]
    assert json.loads((fixed / "config.json").read_text())["normalize"] == "0.5,0.25"
    tensors = load_file(fixed / "model.safetensors")
    assert torch.equal(tensors["mean"], torch.full((1, 3, 1, 1), 0.5))
    assert torch.equal(tensors["std"], torch.full((1, 3, 1, 1), 0.25))
    assert json.loads((runs["dataset"] / "config.json").read_text())["normalize"] == "dataset"
    run = load_run(fixed)
    assert run.cfg.normalize == "0.5,0.25" and torch.equal(run.model.mean, tensors["mean"])


def test_a_file_written_by_energyat_brings_its_statistics(runs, capsys):
    path = runs["fixed"] / "model.safetensors"
    run = load_run(runs["fixed"])
    plain = load_weights_file(path, backbone="small_cnn", dataset="synthetic")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(plain.model(x), run.model(x))
    assert plain.cfg.normalize == "0.5,0.5,0.5,0.25,0.25,0.25" and plain.warnings == []
    assert warnings_in(capsys.readouterr().err) == []


def test_a_plain_backbone_file_gets_the_datasets_statistics_and_says_so(runs, tmp_path, capsys):
    state = {k.removeprefix("net."): v for k, v in load_file(runs["dataset"] / "model.safetensors").items()}
    mean, std = state.pop("mean"), state.pop("std")
    save_file(state, tmp_path / "plain.safetensors")
    run = load_weights_file(tmp_path / "plain.safetensors", backbone="small_cnn", dataset="synthetic")
    assert torch.allclose(run.model.mean, mean) and torch.allclose(run.model.std, std)
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and run.warnings == [lines[0].removeprefix("warning: ")]
    assert lines[0].startswith(f"warning: '{tmp_path / 'plain.safetensors'}' records no input normalisation")
    assert "the model uses the dataset's (mean (" in lines[0] and "--normalize none" in lines[0]


def test_the_metadata_record_of_a_backbone_only_file(runs, tmp_path, capsys):
    state = {k.removeprefix("net."): v for k, v in load_file(runs["dataset"] / "model.safetensors").items()}
    del state["mean"], state["std"]
    record = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    save_file(state, tmp_path / "export.safetensors", metadata={"normalization": json.dumps(record)})
    run = load_weights_file(tmp_path / "export.safetensors", backbone="small_cnn", dataset="synthetic")
    assert torch.allclose(run.model.mean.flatten(), torch.tensor(record["mean"]))
    assert torch.allclose(run.model.std.flatten(), torch.tensor(record["std"]))
    assert warnings_in(capsys.readouterr().err) == []

    save_file(state, tmp_path / "bad.safetensors", metadata={"normalization": '{"mean": [0.1], "std": [0]}'})
    with pytest.raises(CheckpointError, match="records an unusable normalisation in its metadata 'normalization'"):
        load_weights_file(tmp_path / "bad.safetensors", backbone="small_cnn", dataset="synthetic")
    save_file(state, tmp_path / "worse.safetensors", metadata={"normalization": "[1, 2"})
    with pytest.raises(CheckpointError, match=r"is not \{\"mean\": \[...\], \"std\": \[...\]\}"):
        load_weights_file(tmp_path / "worse.safetensors", backbone="small_cnn", dataset="synthetic")


def test_an_explicit_normalize_wins_over_the_record(runs):
    path = runs["fixed"] / "model.safetensors"
    none = load_weights_file(path, backbone="small_cnn", dataset="synthetic", normalize="none")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(none.model(x), none.model.net(x))
    assert not torch.equal(none.model(x), load_run(runs["fixed"]).model(x))
    other = load_weights_file(path, backbone="small_cnn", dataset="synthetic", normalize="0.2,0.3,0.4,1,2,4")
    assert other.model.std.flatten().tolist() == [1.0, 2.0, 4.0]
    data = load_weights_file(path, backbone="small_cnn", dataset="synthetic", normalize="dataset")
    assert torch.equal(data.model.mean, load_run(runs["dataset"]).model.mean)
    with pytest.raises(ConfigError, match="--normalize needs every std > 0"):
        load_weights_file(path, backbone="small_cnn", dataset="synthetic", normalize="0.5,0")


def test_eval_normalize_flag(cli, runs, tmp_path):
    path = runs["fixed"] / "model.safetensors"
    args = ("eval", "--weights", path, "--backbone", "small_cnn", "--dataset", "synthetic", *QUICK_EVAL)
    code, _, err = cli(*args, "--normalize", "none", "--out", tmp_path / "e.json")
    assert code == 0 and warnings_in(err) == [], err
    code, _, err = cli(*args, "--normalize", "1,2,3", "--out", tmp_path / "e.json")
    assert_one_line_error(code, err, "--normalize takes", "3 values")
    code, _, err = cli("eval", runs["fixed"], *QUICK_EVAL, "--normalize", "none")
    assert_one_line_error(code, err, "--normalize applies to --weights")


def test_recorded_normalization_reads_only_energyats_layout():
    tensors = {"net.w": torch.zeros(1), "mean": torch.full((1, 2, 1, 1), 0.5), "std": torch.ones(1, 2, 1, 1)}
    assert recorded_normalization(tensors, {}, "f") == ((0.5, 0.5), (1.0, 1.0))
    backbone_buffer = {"w": torch.zeros(1), "mean": torch.zeros(3), "std": torch.ones(3)}  # a backbone's own
    assert recorded_normalization(backbone_buffer, {}, "f") is None
    with pytest.raises(CheckpointError, match="unusable normalisation in its mean/std buffers"):
        recorded_normalization({**tensors, "std": torch.zeros(1, 2, 1, 1)}, {}, "f")


# -- fix-ups of a weights file, one line each ---------------------------------------------------------
def _model(classes=10):
    torch.manual_seed(0)
    return Classifier(SmallCNN().build(classes), CIFAR_MEAN, CIFAR_STD)


@pytest.mark.parametrize(
    ("prefix", "wrapper"), [("module.", "DistributedDataParallel"), ("_orig_mod.", "torch.compile")]
)
def test_a_removed_prefix_is_one_line(prefix, wrapper, capsys):
    src = _model()
    state = {prefix + k: v for k, v in src.state_dict().items()}
    dst = Classifier(SmallCNN().build(10), CIFAR_MEAN, CIFAR_STD)
    ckpt.load_weights(dst, state, "w.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(dst.eval()(x), src.eval()(x))
    n = len(state)
    assert warnings_in(capsys.readouterr().err) == [
        f"warning: checkpoint 'w.safetensors': removed the prefix '{prefix}' (a {wrapper} wrapper) from {n} keys"
    ]


def test_both_prefixes_are_two_lines_and_a_caller_may_collect_them(capsys):
    state = {f"module._orig_mod.{k}": v for k, v in _model().net.state_dict().items()}
    lines: list[str] = []
    ckpt.load_weights(_model(), state, "w", fixups=lines)
    assert len(lines) == 2 and "'module.'" in lines[0] and "'_orig_mod.'" in lines[1]
    assert capsys.readouterr().err == ""  # collected, not printed


def test_a_converted_precision_is_one_line(capsys):
    state = {k: v.half() if v.is_floating_point() else v for k, v in _model().state_dict().items()}
    ckpt.load_weights(_model(), state, "half")
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint 'half': converted ")
    assert "float16 tensors" in lines[0] and "to float32" in lines[0]


def test_a_failed_load_says_only_its_error(capsys):
    state = {f"module.{k}": v.half() for k, v in _model(classes=100).state_dict().items()}
    with pytest.raises(CheckpointError, match="has 100 classes"):
        ckpt.load_weights(_model(), state, "w")
    assert capsys.readouterr().err == ""


def test_a_file_without_its_buffers_keeps_the_models_normalisation():
    src = _model()
    state = {k: v for k, v in src.state_dict().items() if k not in ("mean", "std")}
    dst = Classifier(SmallCNN().build(10), (0.0,) * 3, (1.0,) * 3)
    ckpt.load_weights(dst, state, "w")
    assert dst.mean.flatten().tolist() == [0.0] * 3
    assert torch.equal(dst.net.state_dict()["linear.weight"], src.net.state_dict()["linear.weight"])
