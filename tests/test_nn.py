"""Sparse layers: equivalence with dense layers, gate sampling vs the ops, RNG stream, gradients."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sparsekern
from sparsekern import nn as snn

L0_CASES = [("weight", "weight"), ("out", "weight"), ("in", "weight"), ("out", "activation"), ("in", "activation")]


KINDS = ["linear", "conv1d", "conv"]
_CLASSES = {"str": {"linear": snn.STRLinear, "conv1d": snn.STRConv1d, "conv": snn.STRConv2d},
            "l0": {"linear": snn.L0Linear, "conv1d": snn.L0Conv1d, "conv": snn.L0Conv2d},
            "gmp": {"linear": snn.MaskedLinear, "conv1d": snn.MaskedConv1d, "conv": snn.MaskedConv2d}}


def _dense(kind):
    return {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: nn.Conv1d(3, 4, 3, padding=1),
            "conv": lambda: nn.Conv2d(3, 4, 3, padding=1)}[kind]()


def _input(kind, batch=3):
    return torch.randn({"linear": (batch, 6), "conv1d": (batch, 3, 7), "conv": (batch, 3, 5, 5)}[kind])


def _apply(layer, x, weight, bias):
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return conv(x, weight, bias, padding=1)


@pytest.mark.parametrize("kind", KINDS)
def test_str_with_vanishing_threshold_equals_dense(kind):
    torch.manual_seed(0)
    dense = _dense(kind)
    cls = _CLASSES["str"][kind]
    layer = cls.from_dense(dense, s_init=-1e4)  # sigmoid(-1e4) == 0 exactly
    assert torch.equal(layer.weight, dense.weight) and torch.equal(layer.bias, dense.bias)
    x = _input(kind)
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=0)
    assert layer.nonzero_mask().all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_str_forward_is_soft_threshold_and_s_gets_gradient(kind, per_channel):
    torch.manual_seed(1)
    cls = _CLASSES["str"][kind]
    layer = cls.from_dense(_dense(kind), per_channel=per_channel, s_init=-2.0)
    assert layer.s.shape == ((layer.weight.shape[0],) if per_channel else (1,))
    with torch.no_grad():
        layer.s.add_(torch.randn_like(layer.s) * 0.3)
    x = _input(kind)
    t = torch.sigmoid(layer.s).reshape((-1,) + (1,) * (layer.weight.dim() - 1))
    expected_w = torch.sign(layer.weight) * torch.clamp(layer.weight.abs() - t, min=0)
    torch.testing.assert_close(layer(x), _apply(layer, x, expected_w, layer.bias))
    layer(x).square().sum().backward()
    assert layer.s.grad is not None and layer.s.grad.abs().sum() > 0
    assert torch.isfinite(layer.weight.grad).all()


def test_str_default_threshold_is_relative_to_weights():
    torch.manual_seed(2)
    dense = nn.Linear(40, 30)
    layer = snn.STRLinear.from_dense(dense)
    torch.testing.assert_close(torch.sigmoid(layer.s), 0.01 * dense.weight.abs().mean().reshape(1))
    per_row = snn.STRLinear.from_dense(dense, per_channel=True)
    torch.testing.assert_close(torch.sigmoid(per_row.s), 0.01 * dense.weight.abs().mean(1))
    sparsity = 1 - layer.nonzero_mask().float().mean().item()
    assert 0 < sparsity < 0.05


def _eval_gates(layer):
    return sparsekern.hard_concrete_eval(layer.log_alpha, gamma=layer.gamma, zeta=layer.zeta)


def _gated_params(layer, z):
    """Weight/bias with gates z (shape of the gates) applied like the layer does."""
    w, b = layer.weight, layer.bias
    rest = (1,) * (w.dim() - 1)
    if layer.granularity == "weight":
        return w * z, b
    if layer.granularity == "out":
        return w * z.reshape((-1,) + rest), b * z
    return w * z.reshape((1, -1) + rest[1:]), b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity,mode", L0_CASES)
def test_l0_eval_is_deterministic_dense_with_eval_gates(kind, granularity, mode):
    torch.manual_seed(3)
    cls = _CLASSES["l0"][kind]
    dense = _dense(kind)
    layer = cls.from_dense(dense, granularity=granularity, mode=mode).eval()
    assert torch.equal(layer.weight, dense.weight)
    with torch.no_grad():
        layer.log_alpha.normal_(0, 3)  # some gates closed, some open, some in between
    x = _input(kind)
    offset = layer.noise_offset
    y1, y2 = layer(x), layer(x)
    assert torch.equal(y1, y2) and layer.noise_offset == offset
    torch.testing.assert_close(y1, _apply(layer, x, *_gated_params(layer, _eval_gates(layer))))
    torch.testing.assert_close(layer.to_dense()(x), y1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity,mode", L0_CASES)
def test_l0_training_sample_matches_ops_and_advances_offset(kind, granularity, mode):
    torch.manual_seed(4)
    cls = _CLASSES["l0"][kind]
    layer = cls.from_dense(_dense(kind), granularity=granularity, mode=mode, drop_rate=0.3).train()
    x = _input(kind, batch=3)
    for _ in range(2):
        seed, offset = layer.noise_seed, layer.noise_offset
        y = layer(x)
        la = layer.log_alpha
        if mode == "weight":
            z = sparsekern.hard_concrete(la, seed, offset)
            expected = _apply(layer, x, *_gated_params(layer, z))
            step = la.numel()
        else:
            z = sparsekern.hard_concrete(la.reshape(1, -1).expand(3, -1).contiguous(), seed, offset)
            zb = z.reshape(z.shape + (1,) * (x.dim() - 2))
            expected = (_apply(layer, x * zb, layer.weight, layer.bias) if granularity == "in"
                        else _apply(layer, x, layer.weight, layer.bias) * zb)
            step = 3 * la.numel()
        torch.testing.assert_close(y, expected)
        assert layer.noise_offset == offset + step
    y.sum().backward()
    assert layer.log_alpha.grad.abs().sum() > 0 and torch.isfinite(layer.log_alpha.grad).all()
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_l0_input_gates_equal_gated_weight_of_the_transpose(kind, dtype):
    """Per-input gates are a broadcast multiply (no transposed copy): the fused op's numbers."""
    torch.manual_seed(5)
    cls = _CLASSES["l0"][kind]
    layer = cls.from_dense(_dense(kind), granularity="in", drop_rate=0.3).to(dtype).train()
    with torch.no_grad():
        layer.log_alpha.normal_(0, 2)
    seed, offset = layer.noise_seed, layer.noise_offset
    sampled, _ = layer._sampled_weight_and_bias()
    assert layer.noise_offset == offset + layer.log_alpha.numel()
    weight = layer.weight.detach().requires_grad_()
    la = layer.log_alpha.detach().requires_grad_()
    fused = sparsekern.gated_weight(weight.transpose(0, 1), la, seed, offset).transpose(0, 1)
    assert sampled.dtype == dtype and torch.equal(sampled, fused)
    probe = torch.randn(sampled.shape)
    (sampled.float() * probe).sum().backward()
    (fused.float() * probe).sum().backward()
    assert torch.equal(layer.weight.grad, weight.grad)
    # grad_log_alpha sums grad * weight over each column, in another order than the fused kernel.
    torch.testing.assert_close(layer.log_alpha.grad, la.grad, rtol=1e-5, atol=1e-6)


def test_seeds_follow_torch_manual_seed():
    def run(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(snn.L0Linear(6, 8, granularity="out"), nn.ReLU(), snn.ChannelGate(8),
                              snn.L0Linear(8, 2, granularity="in", mode="activation"))
        x = torch.randn(4, 6)
        return torch.cat([model(x), model(x)])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_noise_stream_is_in_state_dict():
    torch.manual_seed(5)
    layer = snn.L0Linear(6, 5)
    x = torch.randn(2, 6)
    layer(x)
    clone = snn.L0Linear(6, 5)
    assert clone.noise_seed != layer.noise_seed
    clone.load_state_dict(copy.deepcopy(layer.state_dict()))
    assert (clone.noise_seed, clone.noise_offset) == (layer.noise_seed, layer.noise_offset)
    assert torch.equal(clone(x), layer(x))
    assert layer.state_dict()["noise_state"].dtype == torch.int64


def _old_format(state: dict) -> dict:
    """The state_dict as sparsekern wrote it before the noise buffer: ints in ``_extra_state``."""
    old = {k: v for k, v in state.items() if k != "noise_state"}
    seed, offset = (v + (1 << 64) if v < 0 else v for v in state["noise_state"].tolist())
    old["_extra_state"] = {"noise_seed": seed, "noise_offset": offset}
    return old


def test_old_checkpoints_with_int_extra_state_load():
    torch.manual_seed(5)
    layer = snn.L0Linear(6, 5)
    with torch.no_grad():
        layer.noise_state.copy_(torch.tensor([-3, -7]))  # seed 2**64 - 3, offset 2**64 - 7: near the wrap
    x = torch.randn(2, 6)
    clone = snn.L0Linear(6, 5)
    clone.load_state_dict(_old_format(layer.state_dict()))  # strict: no missing/unexpected keys
    assert (clone.noise_seed, clone.noise_offset) == (2**64 - 3, 2**64 - 7)
    assert torch.equal(clone(x), layer(x)) and torch.equal(clone(x), layer(x))  # across the wrap-around
    assert clone.noise_offset == 2**64 - 7 + 2 * 30 - 2**64
    bad = _old_format(layer.state_dict())
    bad["_extra_state"]["noise_offset"] = -1
    with pytest.raises(ValueError, match="noise_offset"):
        clone.load_state_dict(bad)


def test_channel_gate_per_example_and_eval():
    torch.manual_seed(6)
    gate = snn.ChannelGate(4, drop_rate=0.4)
    x = torch.randn(3, 4, 2, 2)
    seed, offset = gate.noise_seed, gate.noise_offset
    z = sparsekern.hard_concrete(gate.log_alpha.reshape(1, 4).expand(3, 4).contiguous(), seed, offset)
    torch.testing.assert_close(gate(x), x * z[:, :, None, None])
    assert gate.noise_offset == offset + 12
    gate(x).sum().backward()
    assert gate.log_alpha.grad.abs().sum() > 0
    gate.eval()
    torch.testing.assert_close(gate(x), x * _eval_gates(gate)[None, :, None, None])
    with pytest.raises(ValueError, match="ChannelGate"):
        gate(torch.randn(3, 5))


def test_log_alpha_from_external_source():
    torch.manual_seed(7)
    generator = nn.Linear(1, 5)  # stands in for a Dep-L0 gate generator
    source = lambda: generator(torch.ones(1, 1)).reshape(5)  # noqa: E731
    layer = snn.L0Linear(6, 5, granularity="out", log_alpha_source=source)
    assert layer.log_alpha is None and "log_alpha" not in dict(layer.named_parameters())
    assert not any(p is generator.weight for p in layer.parameters())
    layer(torch.randn(2, 6)).sum().backward()
    assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0
    gate = snn.ChannelGate(5, log_alpha_source=source)
    gate.eval()
    torch.testing.assert_close(gate.eval_gates(), sparsekern.hard_concrete_eval(source()))
    layer.set_log_alpha_source(None)
    assert isinstance(layer.log_alpha, nn.Parameter) and layer.log_alpha.shape == (5,)


def test_log_alpha_init_from_drop_rate():
    torch.manual_seed(8)
    layer = snn.L0Linear(100, 100, drop_rate=0.2)
    assert abs(layer.log_alpha.mean().item() - math.log(0.8 / 0.2)) < 1e-3
    assert abs(layer.log_alpha.std().item() - 0.01) < 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_masked_layer_uses_mask(kind):
    torch.manual_seed(9)
    layer = _CLASSES["gmp"][kind].from_dense(_dense(kind))
    layer.mask[0] = False
    x = _input(kind, batch=2)
    torch.testing.assert_close(layer(x), _apply(layer, x, layer.weight * layer.mask, layer.bias))
    assert layer.nonzero_mask()[0].sum() == 0
    torch.testing.assert_close(layer.to_dense()(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
def test_sparsify_swaps_conv1d_and_finalize_bakes_it(method):
    """nn.Conv1d is swapped like nn.Conv2d (stride, dilation, groups and padding mode kept), and
    finalize gives back a plain nn.Conv1d computing the sparse model's eval function."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"), nn.ReLU(),
                          nn.Conv1d(6, 6, 3, groups=2))
    sparse = sparsekern.sparsify(model, method)
    assert [type(m) for m in sparse] == [_CLASSES[method]["conv1d"], nn.ReLU, _CLASSES[method]["conv1d"]]
    assert (sparse[0].stride, sparse[0].dilation, sparse[0].padding_mode, sparse[2].groups) == ((2,), (2,), "reflect", 2)
    for layer in (sparse[0], sparse[2]):  # prune about half, by the method's own knob
        with torch.no_grad():
            if method == "str":
                layer.s.fill_(float(torch.logit(layer.weight.abs().median())))
            elif method == "l0":
                layer.log_alpha.normal_(0, 3)
            else:
                layer.mask.copy_(torch.rand_like(layer.weight) > 0.5)
    sparse.eval()
    x = torch.randn(2, 4, 17)
    plain = sparsekern.finalize(sparse)
    assert [type(m) for m in plain] == [nn.Conv1d, nn.ReLU, nn.Conv1d]
    torch.testing.assert_close(plain(x), sparse(x), rtol=0, atol=0)
    report = sparsekern.sparsity_report(sparse, x)
    zeros = sum(int((m.weight == 0).sum()) for m in plain if isinstance(m, nn.Conv1d))
    assert 0 < zeros and report["total"]["nonzeros"] == report["total"]["params"] - zeros
    # FLOPs: out lengths (17 + 2*2 - 2*2 - 1) // 2 + 1 = 9 and 9 - 2 = 7, per output value
    # in_channels/groups * kernel multiply-accumulates
    assert report["layers"][0]["dense_flops"] == 6 * 9 * 4 * 3 and report["layers"][1]["dense_flops"] == 6 * 7 * 3 * 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="granularity"):
        snn.L0Linear(3, 2, granularity="row")
    with pytest.raises(ValueError, match="mode"):
        snn.L0Linear(3, 2, granularity="weight", mode="activation")
    with pytest.raises(ValueError, match="drop_rate"):
        snn.L0Linear(3, 2, drop_rate=1.0)
    with pytest.raises(ValueError, match="groups"):
        snn.L0Conv2d(4, 4, 3, groups=2, granularity="in")
    with pytest.raises(TypeError, match="plain Linear"):
        snn.STRLinear.from_dense(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="s_init"):
        snn.STRLinear(3, 2, s_init="x")
    with pytest.raises(TypeError, match="log_alpha_source"):
        snn.ChannelGate(3, log_alpha_source=3)
