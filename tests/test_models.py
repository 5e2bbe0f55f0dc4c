"""Tests of the built-in backbones and the Classifier wrapper."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from energyat_core.errors import CheckpointError, ConfigError
from energyat_core.models import (
    Classifier,
    PreActResNet18,
    ResNet18,
    SmallCNN,
    TimmBackbone,
    WideResNet28x10,
    WideResNet34x10,
    build_classifier,
)
from energyat_core.options import build_config

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "backbone",
    [
        PreActResNet18(),
        ResNet18(),
        SmallCNN(),
        WideResNet28x10(WideResNet28x10.Config(depth=10, widen_factor=1)),
        WideResNet34x10(WideResNet34x10.Config(depth=16, widen_factor=2, dropout=0.3)),
    ],
    ids=lambda b: type(b).__name__,
)
def test_output_shape(backbone):
    torch.manual_seed(0)
    net = backbone.build(10)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_backbones_document_themselves():
    for cls in (PreActResNet18, ResNet18, WideResNet28x10, WideResNet34x10, SmallCNN, TimmBackbone):
        assert cls.__doc__ and cls.__doc__.strip().splitlines()[0]
        for f in dataclasses.fields(cls.Config):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_preact_resnet18_parameter_count():
    count = n_params(PreActResNet18().build(10))
    assert abs(count - 11.17e6) / 11.17e6 < 0.01


def test_resnet18_parameter_count():
    count = n_params(ResNet18().build(10))
    assert abs(count - 11.17e6) / 11.17e6 < 0.01


def test_wide_resnet_defaults_and_sizes():
    assert (WideResNet28x10.Config().depth, WideResNet28x10.Config().widen_factor) == (28, 10)
    assert (WideResNet34x10.Config().depth, WideResNet34x10.Config().widen_factor) == (34, 10)
    # parameter count of the full models without running them (construction only)
    with torch.device("meta"):
        assert abs(n_params(WideResNet28x10().build(10)) - 36.48e6) / 36.48e6 < 0.01
        assert abs(n_params(WideResNet34x10().build(10)) - 46.16e6) / 46.16e6 < 0.01


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_config(WideResNet28x10.Config, {"depth": 30}, "backbone 'wrn28_10'")
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet28x10(WideResNet28x10.Config(depth=30)).build(10)
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_config(WideResNet34x10.Config, {"depth": "30"}, "backbone 'wrn34_10'")
    with pytest.raises(ConfigError):
        build_config(WideResNet34x10.Config, {"dropout": "1.5"}, "backbone 'wrn34_10'")


@pytest.mark.parametrize("backbone", [PreActResNet18, ResNet18, SmallCNN])
def test_backbone_widths_must_be_positive(backbone):
    for option in ("width", "in_channels"):
        with pytest.raises(ConfigError, match=f"option '{option}' must be >= 1"):
            build_config(backbone.Config, {option: "0"}, "backbone")


def test_small_cnn_any_input_size_and_batchnorm():
    net = SmallCNN(SmallCNN.Config(width=4)).build(5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for size in (8, 28, 32, 64):
        assert net(torch.rand(3, 3, size, size)).shape == (3, 5)
    net.eval()
    assert net(torch.rand(1, 3, 17, 23)).shape == (1, 5)


def test_small_cnn_learns_quickly():
    torch.manual_seed(0)
    templates = torch.rand(10, 3, 32, 32)
    net = SmallCNN().build(10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):
        y = torch.randint(0, 10, (64,))
        x = (templates[y] + 0.2 * torch.randn(64, 3, 32, 32)).clamp(0, 1)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    y = torch.arange(10).repeat(10)
    x = (templates[y] + 0.2 * torch.randn(100, 3, 32, 32)).clamp(0, 1)
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9


def test_classifier_applies_normalisation():
    torch.manual_seed(0)
    net = SmallCNN().build(10).eval()
    clf = build_classifier(SmallCNN(), 10, CIFAR_MEAN, CIFAR_STD).eval()
    clf.net.load_state_dict(net.state_dict())
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std)
        assert torch.allclose(clf(x), expected, atol=1e-6)
        assert not torch.allclose(clf(x), net(x), atol=1e-3)
    assert clf.mean.shape == (1, 3, 1, 1) and clf.std.shape == (1, 3, 1, 1)
    keys = set(clf.state_dict())
    assert {"mean", "std"} <= keys


def test_classifier_rejects_bad_normalisation():
    with pytest.raises(ValueError):
        Classifier(nn.Identity(), (0.5, 0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError):
        Classifier(nn.Identity(), (0.5,), (0.0,))


def test_set_compiled_keeps_state_dict_keys():
    torch.manual_seed(0)
    clf = Classifier(SmallCNN().build(10), CIFAR_MEAN, CIFAR_STD).eval()
    keys = list(clf.state_dict())
    n_modules = len(list(clf.modules()))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        eager = clf(x)

    calls = []

    def fake_compiled(inp):
        calls.append(inp)
        return clf.forward_eager(inp)

    clf.set_compiled(fake_compiled)
    assert clf.compiled
    assert list(clf.state_dict()) == keys
    assert len(list(clf.modules())) == n_modules
    with torch.no_grad():
        assert torch.equal(clf(x), eager)
    assert len(calls) == 1 and calls[0] is x

    # a copy (e.g. an EMA model) starts eager: the compiled callable is bound to the original
    twin = copy.deepcopy(clf)
    assert not twin.compiled and list(twin.state_dict()) == keys

    clf.set_compiled(None)
    assert not clf.compiled
    with pytest.raises(ValueError):
        clf.set_compiled(clf)


def test_set_compiled_with_torch_compile():
    torch.manual_seed(0)
    clf = Classifier(SmallCNN().build(10), CIFAR_MEAN, CIFAR_STD).eval()
    keys = list(clf.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        eager = clf(x)
        clf.set_compiled(torch.compile(clf.forward_eager, backend="eager"))
        assert torch.allclose(clf(x), eager, atol=1e-6)
        # a compiled inner network gets normalised inputs
        clf.set_compiled(torch.compile(clf.net, backend="eager"))
        assert torch.allclose(clf(x), eager, atol=1e-6)
    assert list(clf.state_dict()) == keys


# --- timm -------------------------------------------------------------------------


def test_timm_backbone_builds_resnet18():
    assert TimmBackbone.Config().model == "resnet18"
    assert dataclasses.fields(TimmBackbone.Config)[0].name == "model"
    net = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(7)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_timm_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet1800'") as info:
        TimmBackbone(TimmBackbone.Config(model="resnet1800")).build(10)
    assert "timm.list_models()" in info.value.fix


def test_timm_refuses_hub_models():
    with pytest.raises(ConfigError, match="Hugging Face"):
        TimmBackbone(TimmBackbone.Config(model="hf-hub:timm/resnet18.a1_in1k")).build(10)


def _body_and_head(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, {
        k: v for k, v in state.items() if k.startswith("fc.")
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_pretrained_file_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(1000)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, str(path))

    torch.manual_seed(1)
    fresh = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(10)
    fresh_head = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("fc.")}

    torch.manual_seed(1)
    loaded = TimmBackbone(TimmBackbone.Config(model="resnet18", pretrained_file=str(path))).build(10)
    body, head = _body_and_head(loaded.state_dict())
    src_body, _ = _body_and_head(source.state_dict())
    assert body.keys() == src_body.keys()
    for k in body:
        assert torch.equal(body[k], src_body[k]), k
    assert head["fc.weight"].shape == (10, 512)
    for k in head:  # the head for 1000 classes was skipped: same fresh init as without the file
        assert torch.equal(head[k], fresh_head[k]), k


def test_timm_pretrained_file_missing(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        TimmBackbone(TimmBackbone.Config(model="resnet18", pretrained_file=str(missing))).build(10)


def test_timm_pretrained_file_unreadable_or_unrelated(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="is not a safetensors file of pretrained weights"):
        TimmBackbone(TimmBackbone.Config(model="resnet18", pretrained_file=str(garbage))).build(10)

    garbage_pth = tmp_path / "garbage.pth"
    garbage_pth.write_bytes(b"\x00\x01 nonsense")
    with pytest.raises(CheckpointError, match="is not a weights-only torch file of pretrained weights"):
        TimmBackbone(TimmBackbone.Config(model="resnet18", pretrained_file=str(garbage_pth))).build(10)

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, str(unrelated))
    with pytest.raises(CheckpointError, match="no weight"):
        TimmBackbone(TimmBackbone.Config(model="resnet18", pretrained_file=str(unrelated))).build(10)


def test_timm_pretrained_adapts_input_channels(tmp_path):
    from safetensors.torch import save_file

    source = TimmBackbone(TimmBackbone.Config(model="resnet18")).build(10)
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    gray = TimmBackbone(TimmBackbone.Config(model="resnet18", in_chans=1, pretrained_file=str(path))).build(10)
    assert gray.conv1.weight.shape[1] == 1
    assert torch.equal(gray.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert gray(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_timm_config_validation():
    with pytest.raises(ConfigError):
        build_config(TimmBackbone.Config, {"in_chans": "0"}, "backbone 'timm'")
    with pytest.raises(ConfigError, match="must name a timm model"):
        build_config(TimmBackbone.Config, {"model": "  "}, "backbone 'timm'")
    with pytest.raises(ConfigError, match="drop_rate"):
        build_config(TimmBackbone.Config, {"drop_rate": "1"}, "backbone 'timm'")
    cfg = build_config(TimmBackbone.Config, {"model": "resnet18", "pretrained_file": "none"}, "backbone 'timm'")
    assert cfg.pretrained_file is None
