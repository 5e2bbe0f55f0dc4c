"""timm backbones on small images: the stem adaptation, the 1x1 warning, and pretrained files said in full.

A timm ResNet keeps its ImageNet stem (7x7 stride-2 conv and a max-pool) unless told; on 32x32
images that ends in a 1x1 map. The backbone adapts the stem for images of 32x32 or smaller, warns
when a map collapses anyway, and loads pretrained weights from a local file only, with every
change to them (head, stem conv, prefix, precision) said in one ``warning:`` line.
"""

from __future__ import annotations

import socket

import pytest
import torch
from safetensors.torch import save_file

from energyat_core.components import RunContext
from energyat_core.errors import ConfigError
from energyat_core.models import TimmBackbone
from energyat_core.models.stem import adapt_stem, feature_map_size

pytest.importorskip("timm")

CIFAR = (3, 32, 32)


class _Data:
    """What a backbone's setup reads of the run's data."""

    def __init__(self, shape):
        self.image_shape = shape


def backbone(image_shape=CIFAR, loading_weights=None, **options) -> TimmBackbone:
    """A timm backbone set up for a run on images of ``image_shape``."""
    b = TimmBackbone(TimmBackbone.Config(**{"model": "resnet18", **options}))
    extras = {"loading_weights": loading_weights} if loading_weights else {}
    b.setup(RunContext(device=torch.device("cpu"), num_classes=10, data=_Data(image_shape), extras=extras))  # type: ignore[arg-type]
    return b


def warnings_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


def test_resnet18_keeps_a_4x4_map_on_32x32_images(capsys):
    net = backbone().build(10)
    assert feature_map_size(net, CIFAR) == (4, 4)
    assert tuple(net.conv1.kernel_size) == (3, 3) and tuple(net.conv1.stride) == (1, 1)
    assert tuple(net.conv1.padding) == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.rand(2, *CIFAR)).shape == (2, 10)
    assert warnings_of(capsys) == []


def test_without_the_adaptation_the_map_collapses_to_1x1_and_that_is_said(capsys):
    net = backbone(small_input=False).build(10)
    assert feature_map_size(net, CIFAR) == (1, 1)
    lines = warnings_of(capsys)
    assert len(lines) == 1 and lines[0].startswith("warning: timm model 'resnet18' ends in a 1x1 feature map")
    assert "3x32x32" in lines[0] and "backbone.small_input=true" in lines[0]


@pytest.mark.parametrize(
    ("shape", "option", "adapted"),
    [((3, 32, 32), None, True), ((1, 28, 28), None, True), ((3, 64, 64), None, False), ((3, 64, 64), True, True)],
)
def test_the_adaptation_is_on_by_default_up_to_32x32(shape, option, adapted, capsys):
    b = backbone(shape, small_input=option, in_chans=shape[0])
    assert b.small_input is adapted
    net = b.build(10)
    assert (tuple(net.conv1.kernel_size) == (3, 3)) is adapted
    size = feature_map_size(net, shape)
    assert size is not None and min(size) > 1  # 64x64 without the adaptation: 2x2
    assert warnings_of(capsys) == []


def test_without_the_data_nothing_is_adapted_nor_checked(capsys):
    net = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(10)
    assert tuple(net.conv1.kernel_size) == (7, 7)
    assert warnings_of(capsys) == []


@pytest.mark.parametrize("name", ["resnet18d", "efficientnet_b0", "convnext_atto", "regnetx_002"])
def test_other_stems_keep_a_spatial_map(name):
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=10)
    assert feature_map_size(net, CIFAR) == (1, 1)
    change = adapt_stem(net)
    assert change is not None and change.changes
    size = feature_map_size(net, CIFAR)
    assert size is not None and min(size) >= 2, (name, change.describe())


def test_an_architecture_without_a_known_stem_is_said_in_one_line(capsys):
    net = backbone(model="dla46_c").build(10)
    assert net(torch.rand(2, *CIFAR)).shape == (2, 10)
    lines = warnings_of(capsys)
    assert lines[0] == (
        "warning: timm model 'dla46_c' has no stem energyat can adapt to small images (it knows conv1+maxpool, "
        "stem and conv_stem models): it keeps its ImageNet stem"
    )
    assert len(lines) == 2 and "1x1 feature map" in lines[1]  # and it does collapse


def test_a_model_that_cannot_take_the_images_is_one_config_error():
    with pytest.raises(ConfigError, match=r"does not run on 3x32x32 images") as info:
        backbone(in_chans=1).build(10)
    assert "in_chans" in info.value.fix


def test_a_dry_build_on_the_meta_device_says_nothing(capsys):
    with torch.device("meta"):
        net = backbone(small_input=False).build(10)
    assert next(net.parameters()).is_meta
    assert warnings_of(capsys) == []


# -- pretrained files ---------------------------------------------------------------------------
def _imagenet_file(tmp_path, name="imagenet.safetensors", transform=None):
    """A resnet18 state dict as an ImageNet checkpoint has it: 7x7 conv1 and a 1000-class head."""
    torch.manual_seed(0)
    source = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(1000)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if transform is not None:
        state = transform(state)
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path, source


def test_pretrained_weights_into_the_adapted_stem(tmp_path, capsys):
    path, source = _imagenet_file(tmp_path)
    net = backbone(pretrained_file=str(path)).build(10)
    assert torch.equal(net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(net.bn1.weight, source.bn1.weight)
    assert net.conv1.weight.shape == (64, 3, 3, 3) and net.fc.weight.shape == (10, 512)
    lines = warnings_of(capsys)
    assert len(lines) == 2, lines
    head, stem = lines
    assert head == (
        f"warning: pretrained file '{path}': its classifier head has 1000 outputs, the model 10 classes: "
        "head re-initialised (fc.bias, fc.weight)"
    )
    assert stem == (
        f"warning: pretrained file '{path}': 'conv1.weight' has shape (64, 3, 7, 7), the adapted stem "
        "(64, 3, 3, 3): re-initialised (conv1.weight)"
    )


def test_a_pretrained_conv1_of_another_shape_is_refused_without_the_adaptation(tmp_path):
    from energyat_core.errors import CheckpointError

    path, _ = _imagenet_file(tmp_path, transform=lambda s: {**s, "conv1.weight": torch.zeros(64, 3, 5, 5)})
    with pytest.raises(CheckpointError, match=r"'conv1.weight' has shape \(64, 3, 5, 5\), the model expects"):
        backbone(small_input=False, pretrained_file=str(path)).build(1000)


@pytest.mark.parametrize("prefix", ["module.", "net.", "module.net."])
def test_a_stripped_prefix_is_said(tmp_path, capsys, prefix):
    path, source = _imagenet_file(tmp_path, transform=lambda s: {prefix + k: v for k, v in s.items()})
    net = backbone(small_input=False, pretrained_file=str(path)).build(1000)
    assert torch.equal(net.conv1.weight, source.conv1.weight) and torch.equal(net.fc.weight, source.fc.weight)
    lines = [line for line in warnings_of(capsys) if "1x1" not in line]
    assert lines == [f"warning: pretrained file '{path}': removed the prefix '{prefix}' from its keys"]


def test_half_precision_pretrained_weights_are_converted_and_said(tmp_path, capsys):
    path, source = _imagenet_file(
        tmp_path, transform=lambda s: {k: v.half() if v.is_floating_point() else v for k, v in s.items()}
    )
    net = backbone(small_input=False, pretrained_file=str(path)).build(1000)
    assert net.conv1.weight.dtype == torch.float32
    assert torch.equal(net.conv1.weight, source.conv1.weight.half().float())
    lines = [line for line in warnings_of(capsys) if "1x1" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: pretrained file '{path}': converted ")
    assert "float16 tensors" in lines[0] and "to float32" in lines[0]


def test_extra_and_missing_keys_are_said(tmp_path, capsys):
    def change(state):
        state = {k: v for k, v in state.items() if not k.startswith("layer4.1.bn2.")}
        return {**state, "extra.weight": torch.zeros(2)}

    path, _ = _imagenet_file(tmp_path, transform=change)
    backbone(small_input=False, pretrained_file=str(path)).build(1000)
    lines = [line for line in warnings_of(capsys) if "1x1" not in line]
    assert len(lines) == 2, lines
    assert "1 keys the model does not have were ignored (e.g. ['extra.weight'])" in lines[0]
    assert "5 tensors of the model are not in it and keep their initialisation" in lines[1]


def test_pretrained_files_never_reach_the_network_and_pickles_are_read_weights_only(tmp_path, monkeypatch, capsys):
    path, source = _imagenet_file(tmp_path, name="imagenet.pth")

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    net = backbone(pretrained_file=str(path)).build(10)
    assert torch.equal(net.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert calls == [True]


def test_a_run_read_back_does_not_read_its_pretrained_file_again(tmp_path, capsys):
    missing = tmp_path / "moved-away.safetensors"
    net = backbone(pretrained_file=str(missing), loading_weights="run/model.safetensors").build(10)
    assert net.conv1.weight.shape == (64, 3, 3, 3)
    assert warnings_of(capsys) == []


# -- through the engine: a run's model and its file --------------------------------------------
def test_build_model_gives_the_backbone_the_data_and_a_run_reads_back(tmp_path, capsys):
    from energyat_core import checkpoint as ckpt
    from energyat_core.build import build_data, build_model
    from energyat_core.saved_run import load_run
    from energyat_core.testing import compose_config, fresh_registry
    from energyat_core.training_state import model_metadata

    registry = fresh_registry()
    sets = ["dataset.n_train=16", "dataset.n_test=8"]
    cfg = compose_config(registry, flags={"backbone": "timm:resnet18", "device": "cpu"}, sets=sets)
    data = build_data(registry, cfg)
    model = build_model(registry, cfg, data, torch.device("cpu")).eval()
    assert model.net.conv1.weight.shape == (64, 3, 3, 3) and isinstance(model.net.maxpool, torch.nn.Identity)
    (tmp_path / "run").mkdir()
    ckpt.save_model(tmp_path / "run" / "model.safetensors", model, model_metadata(cfg, data, 1))
    run = load_run(tmp_path / "run", registry=registry)  # the size check builds the adapted stem too
    x = torch.rand(2, *CIFAR)
    assert torch.equal(run.model(x), model(x))
    assert warnings_of(capsys) == [] and run.warnings == []
