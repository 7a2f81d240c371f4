"""finalize: plain PyTorch export; baked weights load into the original architecture; structured
gates shrink the model and keep its eval-mode outputs."""
import pytest
import torch
from torch import nn

from sparsekern import nn as snn
from sparsekern import pruning


def _randomize(model, spread=3.0):
    """Spread gates (some closed, some open) and give BatchNorms non-trivial statistics."""
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "log_alpha", None) is not None:
                m.log_alpha.normal_(0, spread)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()
    return model


def _plain(model):
    return all(not isinstance(m, (snn.SparseModule, snn.ChannelGate)) for m in model.modules())


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _lenet5ish():
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 4))


def _conv1d_net():
    return nn.Sequential(nn.Conv1d(2, 6, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4, 10), nn.ReLU(), nn.Linear(10, 4))


NETS = {"conv2d": (_lenet5ish, (3, 1, 10, 10)), "conv1d": (_conv1d_net, (3, 2, 10))}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method,opts", [("str", {"s_init": -2.5}), ("str", {"per_channel": True}),
                                         ("l0", {"granularity": "weight"}), ("gmp", {})])
def test_unstructured_export_loads_into_original_architecture(method, opts, net):
    build, shape = NETS[net]
    torch.manual_seed(0)
    sparse = pruning.sparsify(build(), method, **opts)
    _randomize(sparse)
    if method == "gmp":
        pruning.GMP(sparse, 0.5, 1, end_frac=0.0).step()
    sparse.eval()
    exported = pruning.finalize(sparse)
    assert _plain(exported) and not exported.training
    assert isinstance(sparse[0], snn.SparseModule)  # the input model is untouched
    original = build()
    original.load_state_dict(exported.state_dict())  # strict
    x = torch.randn(*shape)
    torch.testing.assert_close(original.eval()(x), sparse(x))
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d)
    zeros = sum(int((m.weight == 0).sum()) for m in exported.modules() if isinstance(m, layers))
    assert zeros > 0


def test_neuron_gates_shrink_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.Tanh(), nn.Dropout(0.1),
                          nn.Linear(16, 5))
    pruning.sparsify(model, "l0", granularity="in")
    _randomize(model).eval()
    exported = pruning.finalize(model)
    assert _plain(exported)
    kept1, kept2 = model[2].kept(), model[5].kept()
    assert 0 < kept1.sum() < 20 and 0 < kept2.sum() < 16
    assert exported[0].out_features == int(kept1.sum()) and exported[2].in_features == int(kept1.sum())
    assert exported[2].out_features == int(kept2.sum()) and exported[5].in_features == int(kept2.sum())
    assert exported[0].in_features == 12 and exported[5].out_features == 5  # the model's interface
    x = torch.randn(7, 12)
    torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-5)
    assert _params(exported) < _params(pruning.finalize(model, shrink=False))


def test_output_gates_with_batchnorm_fold_constants():
    """out-gated conv -> BN -> ReLU -> unpadded conv: closed filters leave BN's shift, folded into the bias."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4, bias=False),
                          nn.Sigmoid(), nn.Linear(4, 3))
    pruning.sparsify(model, "l0", granularity="out", mode="activation", exclude="10")
    _randomize(model).eval()
    exported = pruning.finalize(model)
    assert exported[0].out_channels == int(model[0].kept().sum()) < 8
    assert exported[1].num_features == exported[3].in_channels == exported[0].out_channels
    assert exported[3].out_channels == int(model[3].kept().sum()) < 6
    x = torch.randn(5, 3, 9, 9)
    torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-5)


def test_channel_gates_shrink_conv_bn_chain_through_flatten():
    """conv -> BN -> gate -> ReLU (Dep-L0 style), padded convs, pooling, Flatten -> Linear."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), snn.ChannelGate(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10), nn.ReLU(),
                      snn.ChannelGate(10), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Linear(10 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 2))
    _randomize(model).eval()
    exported = pruning.finalize(model)
    assert _plain(exported)
    k1, k2 = int(model[0][2].kept().sum()), int(model[1][3].kept().sum())
    assert 0 < k1 < 8 and 0 < k2 < 10
    assert exported[0][0].out_channels == k1 and exported[1][0].in_channels == k1
    assert exported[1][0].out_channels == k2 and exported[3].in_features == k2 * 9
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(exported(x), model(x), rtol=0, atol=1e-5)
    assert _params(exported) < _params(model)


def test_unsupported_shrinks_raise_clear_errors():
    torch.manual_seed(4)
    padded = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    pruning.sparsify(padded, "l0", granularity="out", include="0")
    _randomize(padded).eval()
    with pytest.raises(ValueError, match="padded conv"):
        pruning.finalize(padded)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(pruning.finalize(padded, shrink=False)(x), padded(x), rtol=0, atol=1e-5)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    custom = pruning.sparsify(Custom(), "l0", granularity="out")
    with torch.no_grad():
        custom.a.log_alpha.copy_(torch.tensor([-9.0, 5, 5, 5, 5, 5]))  # one closed unit
    with pytest.raises(ValueError, match="shrink=False"):
        pruning.finalize(custom)
    assert _plain(pruning.finalize(custom, shrink=False))

    softmax_between = nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 2))
    pruning.sparsify(softmax_between, "l0", granularity="in", include="2")
    with torch.no_grad():
        softmax_between[2].log_alpha.copy_(torch.tensor([-9.0, 5, 5, 5, 5, 5]))
    with pytest.raises(ValueError, match="Softmax"):
        pruning.finalize(softmax_between)
    with pytest.raises(ValueError, match="ChannelGate must follow"):
        pruning.finalize(nn.Sequential(nn.Softmax(dim=1), snn.ChannelGate(3)))
