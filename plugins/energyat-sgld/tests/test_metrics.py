"""FID / IS through torch-fidelity's formulas, with a small stand-in feature network (no download)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_fidelity")

from energyat_sgld.metrics import (  # noqa: E402
    MetricsError,
    compute_metrics,
    frechet_distance,
    inception_extractor,
    inception_score,
    parse_metrics,
)


class StandIn(nn.Module):
    """A fixed random conv net: uint8 images -> (8 pooled features, 5 class logits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        feats = torch.tanh(self.conv(images.float() / 255)).mean(dim=(2, 3))
        return feats, 4 * self.head(feats)


def features(n: int = 400, dim: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g).double()


def test_fid_identities():
    a = features()
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # B = 2A: ||mu_A - 2 mu_A||^2 + tr(S + 4S - 2 * 2S) = ||mu_A||^2 + tr(S)
    mu, cov = a.mean(0), torch.cov(a.T)
    assert frechet_distance(a, 2 * a) == pytest.approx(float(mu @ mu + cov.trace()), rel=1e-6)


def test_inception_score_identities():
    k = 5
    confident = 50 * torch.eye(k).repeat(20, 1)  # 100 samples, every class equally often, p ~ one-hot
    mean, std = inception_score(confident, splits=1)  # one split: exp(H(marginal)) = exp(log k)
    assert mean == pytest.approx(k, rel=1e-6) and std == 0
    mean, _ = inception_score(confident, splits=10)  # shuffled splits of 10 cover fewer classes
    assert 1 < mean < k
    mean, _ = inception_score(torch.zeros(100, k), splits=10)  # p uniform: KL = 0, IS = 1
    assert mean == pytest.approx(1.0)
    mean, _ = inception_score(50 * torch.eye(k)[torch.zeros(100, dtype=torch.long)], splits=10)  # one class only
    assert mean == pytest.approx(1.0, abs=1e-6)


def test_compute_metrics_with_a_stand_in_network():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(300, 3, 16, 16, generator=g) * 120 + 60).to(torch.uint8)
    close = (real.float() + torch.randint(-3, 4, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    noise = torch.randint(0, 256, (300, 3, 16, 16), generator=g, dtype=torch.uint8)
    net = StandIn()
    same = compute_metrics(real, real, ["fid", "is"], net, batch_size=64)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert set(same) == {"fid", "is_mean", "is_std"} and same["is_mean"] >= 1.0
    near = compute_metrics(close, real, ["fid"], net)["fid"]
    far = compute_metrics(noise, real, ["fid"], net)["fid"]
    assert 0 < near < far
    assert set(compute_metrics(noise, None, ["is"], net)) == {"is_mean", "is_std"}
    grey = real[:, :1]  # one channel is repeated to three
    assert compute_metrics(grey, grey, ["fid"], net)["fid"] == pytest.approx(0.0, abs=1e-6)


def test_parse_metrics():
    assert parse_metrics("fid, IS") == ["fid", "is"]
    assert parse_metrics(None) == []
    with pytest.raises(MetricsError, match="unknown metric"):
        parse_metrics("fid,kid")


def test_missing_weights_file_is_a_one_line_error(tmp_path):
    with pytest.raises(MetricsError) as err:
        inception_extractor(tmp_path / "nope.pth", torch.device("cpu"))
    line = err.value.line()
    assert "does not exist" in line and "--inception-weights" in line and "\n" not in line
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsError, match="is not a weights-only torch file of InceptionV3 weights") as err:
        inception_extractor(bad, torch.device("cpu"))
    assert "--inception-weights" in err.value.line() and "\n" not in err.value.line()


def test_no_network_and_no_cached_weights_says_how_to_fix(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MetricsError) as err:
        inception_extractor(None, torch.device("cpu"))
    line = err.value.line()
    assert "could not be downloaded" in line and "--inception-weights FILE" in line
    assert inception.URL_INCEPTION_V3 in line and "\n" not in line
