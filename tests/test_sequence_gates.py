"""Structured channel gates on Linear layers applied to sequences x [B, T, D]: one gate per
feature (neuron), the last dim; per-token samples in training, as L0Linear's activation gates."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.nn import ChannelGate
from sparsekern.pruning.surgery.channel_gating import chained_gates, measure_positions

pytestmark = pytest.mark.usefixtures("one_thread")
D, FF = 16, 24
LAYERS = ["layers.0.linear1", "layers.1.linear1"]


def _encoder():
    torch.manual_seed(0)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 4, FF, dropout=0.0, batch_first=True), 2,
                                 enable_nested_tensor=True)


def test_feature_gate_on_a_sequence_equals_the_flattened_tokens():
    gate = ChannelGate(D, channel_dim=-1)
    twin = ChannelGate(D)  # gates dim 1 of [B*T, D]: the same thing by definition
    twin.load_state_dict(gate.state_dict())
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(gate(x), twin(x.reshape(10, D)).reshape(2, 5, D))
    gate.eval(), twin.eval()
    z = gate.eval_gates()
    torch.testing.assert_close(gate(x), x * z)
    with pytest.raises(ValueError, match=r"ChannelGate: expected x of shape \[\.\.\., 16\], got \(2, 5, 8\)"):
        gate(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="channel_dim must be 1 or -1"):
        ChannelGate(D, channel_dim=2)


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
def test_gated_encoder_trains_evaluates_and_finalizes(method):
    model = sk.sparsify(_encoder(), method, layers=LAYERS)
    gates = chained_gates(model)
    assert len(gates) == 2 and all(g.channel_dim == -1 and g.num_channels == FF for g in gates)
    x = torch.randn(3, 7, D)
    out = model(x)  # training forward: per-token gate samples
    loss = out.square().mean() + sk.regularization(model, lam=1e-3, num_samples=1)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n)
    measure_positions(model, x)
    assert [g.chain.positions for g in gates] == [7.0, 7.0]  # one position per token
    with torch.no_grad():
        for g in gates:
            if g.log_alpha is not None:
                g.log_alpha[: FF // 2].fill_(-8.0)  # half the neurons closed
    model.eval()
    with_grad = model(x).detach()
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 5:] = True
    with torch.no_grad():
        torch.testing.assert_close(model(x), with_grad, rtol=1e-5, atol=1e-5)
        padded = model(x, src_key_padding_mask=mask)  # a gated encoder must not take the nested path
    torch.testing.assert_close(padded[~mask], model(x, src_key_padding_mask=mask).detach()[~mask])
    final = sk.finalize(model, shrink=False)
    with torch.no_grad():
        torch.testing.assert_close(final(x), with_grad, rtol=1e-5, atol=1e-5)
    if method == "l0_hc":  # closed neurons are zero rows of linear1
        rows = final.layers[0].linear1.weight.abs().sum(1)
        assert (rows[: FF // 2] == 0).all() and (rows[FF // 2:] > 0).all()
