"""finalize of a user-defined residual model gated by l0_hc / dep_l0: the user's own module
types and state_dict keys come back, gates folded into the BatchNorms (closed channels as
zeros), and the logits are the gated eval model's. Shrinking such a model is refused, saying so."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.pruning.surgery.channel_gating import chained_gates

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 5):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block1, self.block2 = Block(c), Block(c)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(self.pool(x).flatten(1))


def _gated(method: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = sk.sparsify(TinyResNet(), method, **kw)
    x = torch.randn(4, 3, 8, 8)
    model(x)  # a training step's BN statistics
    with torch.no_grad():
        for i, g in enumerate(chained_gates(model)):
            if g.log_alpha is not None:
                g.log_alpha[i % 3:: 3].fill_(-8.0)  # closed channels in every gated layer
    return model.eval()


@pytest.mark.parametrize("method,kw", [("l0_hc", {}), ("dep_l0", {}),
                                       ("l0_hc", {"layers": ["block1.conv1", "block2.conv1"]})])
def test_finalize_returns_the_users_classes(method, kw):
    model = _gated(method, **kw)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    final = sk.finalize(model, shrink=False)
    fresh = TinyResNet()
    assert [type(m) for m in final.modules()] == [type(m) for m in fresh.modules()]
    fresh.load_state_dict(final.state_dict())  # strict: the user's keys exactly
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final(x), expected, rtol=1e-5, atol=1e-5)
    if method == "l0_hc":  # closed channels are zeros in the BatchNorm the gate folded into
        gate_closed = (final.block1.bn1.weight == 0) & (final.block1.bn1.bias == 0)
        assert gate_closed.any()


def test_shrinking_a_residual_user_model_says_what_to_do():
    model = _gated("l0_hc")
    with pytest.raises(ValueError, match=r"residual and other user models are not shrunk.*shrink=False\) returns "
                                         r"your model's own classes"):
        sk.finalize(model)
