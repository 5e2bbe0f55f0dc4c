"""Model sanity checks before evaluation: randomised outputs, probabilities, zero gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energyat_core.sanity import looks_like_probabilities, print_warnings, sanity_checks, zero_gradient_fraction


def conv_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


class Softmaxed(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class DropoutAtEval(nn.Module):
    """Dropout that stays on in eval mode (F.dropout with training=True): a randomised model."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(F.dropout(x, p=0.3, training=True))


class Quantised(nn.Module):
    """Rounds its input to 4 grey levels first: the input gradient is exactly zero everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


def data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def kinds(warnings: list[str]) -> set[str]:
    out = set()
    for w in warnings:
        if "randomised" in w:
            out.add("random")
        if "probabilities" in w:
            out.add("probabilities")
        if "exactly zero" in w:
            out.add("zero-grad")
    return out


def test_a_normal_model_raises_no_warning():
    x, y = data()
    assert sanity_checks(conv_net().eval(), x, y) == []


def test_softmax_output_is_flagged_as_probabilities():
    x, y = data()
    assert kinds(sanity_checks(Softmaxed(conv_net()).eval(), x, y)) == {"probabilities"}


def test_dropout_at_eval_time_is_flagged_as_randomised():
    x, y = data()
    torch.manual_seed(1)
    warnings = sanity_checks(DropoutAtEval(conv_net()).eval(), x, y)
    assert kinds(warnings) == {"random"}
    assert all("\n" not in w for w in warnings)


def test_dropout_module_counts_only_in_train_mode():
    x, y = data()
    net = nn.Sequential(conv_net(), nn.Dropout(0.5))
    assert sanity_checks(net.eval(), x, y) == []  # nn.Dropout is off in eval mode
    torch.manual_seed(0)
    assert kinds(sanity_checks(net.train(), x, y)) == {"random"}  # a model evaluated in train mode


def test_zero_input_gradients_are_flagged():
    x, y = data()
    assert kinds(sanity_checks(Quantised(conv_net()).eval(), x, y)) == {"zero-grad"}


def test_zero_gradient_fraction_is_exact():
    # f(x) = W relu(mean(x) - 0.5): points with mean below 0.5 get an exactly zero gradient
    torch.manual_seed(0)
    lin = nn.Linear(1, 10)

    class Thresholded(nn.Module):
        def forward(self, x):
            return lin(F.relu(x.flatten(1).mean(1, keepdim=True) - 0.5))

    x = torch.cat([torch.full((4, 3, 2, 2), 0.2), torch.full((6, 3, 2, 2), 0.8)])
    y = torch.zeros(10, dtype=torch.long)
    assert zero_gradient_fraction(Thresholded(), x, y) == pytest.approx(0.4)
    # 40% is not "most points": no warning; 80% is
    assert kinds(sanity_checks(Thresholded(), x, y)) == set()
    x[4:8] = 0.1
    assert kinds(sanity_checks(Thresholded(), x, y)) == {"zero-grad"}


def test_a_model_ignoring_its_input_has_no_gradient_at_all():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))

        def forward(self, x):
            return self.bias.expand(len(x), 3)

    x, _ = data(4)
    assert zero_gradient_fraction(Constant(), x, torch.zeros(4, dtype=torch.long)) == 1.0


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], True),  # rows sum to one
        ([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5]], True),  # sigmoids: all in [0, 1]
        ([[2.0, 0.5, 0.1], [0.3, 0.3, 0.4]], False),  # non-negative but neither
        ([[-0.1, 0.6, 0.5], [0.2, 0.3, 0.5]], False),  # a negative value: logits
        ([[3.0, -2.0, 1.0]], False),
    ],
)
def test_looks_like_probabilities(outputs, expected):
    assert looks_like_probabilities(torch.tensor(outputs)) is expected


def test_parameters_grads_are_left_untouched():
    x, y = data()
    net = conv_net().eval()
    sanity_checks(net, x, y)
    assert all(p.grad is None for p in net.parameters())


def test_warnings_print_as_yellow_one_liners():
    from rich.console import Console

    console = Console(record=True, width=60, force_terminal=False)
    print_warnings(console, ["first thing", "second thing"])
    text = console.export_text()
    assert text.splitlines() == ["warning: first thing", "warning: second thing"]
