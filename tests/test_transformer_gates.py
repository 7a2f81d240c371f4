"""Head and neuron gates for transformers (issue 19, items 2 and 6): placement, the FLOPs the
gates control, a FLOPs target (landing, and the shrunk model's FLOPs), bad input.
str / l0 / gmp on the same models: tests/test_transformer_unstructured.py."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.nn import ChannelGate
from sparsekern.pruning.methods.l0 import ChannelL0, DepL0
from sparsekern.pruning.surgery.channel_gating import chained_gates, measure_positions
from sparsekern.pruning.surgery.report import sparsity_report
from sparsekern.pruning.surgery.transformer_gating import transformer_gates
from transformer_cases import (FFN, HEADS, HIDDEN, MODELS, SEQ, VOCAB, T, _empty_head_layers, _forward, _hf, _input,
                               _model, _one_head_flops, _positions, build_model)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
@pytest.mark.parametrize("kind", MODELS)
def test_one_gate_per_head_and_per_neuron(kind, method):
    model = sk.sparsify(_model(kind), method)
    gates = [g for _, g in transformer_gates(model)]
    assert sorted((type(g).__name__, g.num_channels) for g in gates) == sorted(
        [("HeadGate", HEADS), ("ChannelGate", FFN[kind])] * 2)
    assert chained_gates(model) == gates
    assert hasattr(model, "gate_generator") == (method == "dep_l0")
    x = _input(kind)
    model.train()
    _forward(model, x).square().mean().backward()  # training forward: sampled gates
    assert all(p.grad is not None for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n)


def _flops_penalty_steps(model, x, steps=20):
    measure_positions(model, x)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n], lr=0.3)
    model.train()
    for _ in range(steps):
        loss = _forward(model, x).square().mean() + sk.regularization(model, lam=1e-4, num_samples=1, cost="flops")
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", MODELS)
def test_flops_penalty_lowers_the_expected_flops(kind):
    model = sk.sparsify(_model(kind), "l0_hc")
    x = _input(kind)
    measure_positions(model, x)
    gates = chained_gates(model)
    with torch.no_grad():
        before = sum(float(g.chain.term(0, g.open_probability().sum(), True)) for g in gates)
    _flops_penalty_steps(model, x)
    with torch.no_grad():
        after = sum(float(g.chain.term(0, g.open_probability().sum(), True)) for g in gates)
    assert after < 0.9 * before


@pytest.mark.parametrize("kind", MODELS + ["torch_encoder"])
def test_report_counts_the_attention_products_at_the_sequence_length(kind):
    model = _model(kind)
    x = _input(kind)
    t = _positions(kind)
    rows = [r for r in sparsity_report(model, x)["layers"] if r["type"] == "attention"]
    assert [(r["dense_flops"], r["effective_flops"], r["sequence_length"], r["params"]) for r in rows] == \
        [(2.0 * t * t * HIDDEN, 2.0 * t * t * HIDDEN, t, 0)] * 2
    if kind != "vit":  # half the tokens: a quarter of the attention products
        short = [r for r in sparsity_report(model, x[:, : SEQ // 2])["layers"] if r["type"] == "attention"]
        assert [r["dense_flops"] for r in short] == [2.0 * (SEQ // 2) ** 2 * HIDDEN] * 2
    gated = sk.sparsify(model, "l0_hc")
    with torch.no_grad():
        for _, g in transformer_gates(gated):
            g.log_alpha[:1].fill_(-9.0)  # one head of four closed: three quarters of the products left
    rows = [r for r in sparsity_report(gated, x)["layers"] if r["type"] == "attention"]
    assert [r["effective_flops"] for r in rows] == [1.5 * t * t * HIDDEN] * 2


def _config(**kw):
    fields = {"target_flops": None, "target_sparsity": None, "lam": None, "gate_lr": None, "dependency": None,
              "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "recipe": None}
    return types.SimpleNamespace(**{**fields, **kw})


@pytest.mark.parametrize("method", [ChannelL0, DepL0])
@pytest.mark.parametrize("kind", MODELS + ["llama_gqa", "torch_encoder"])
def test_a_flops_target_lands_within_one_point(kind, method):
    target, steps = 0.6, 40
    config = _config(target_flops=target)
    m = method(config)
    model = m.sparsify(_model(kind))
    x = _input(kind, batch=4)
    controller = m.controller(model, steps, x)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n],
                           lr=m.gate_lr())
    for _ in range(steps):
        model.train()
        m.set_gate_modes(model)
        loss = _forward(model, x).square().mean()
        penalty = m.penalty(model, 1)
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        controller.step()
    fraction = sparsity_report(model, x)["total"]
    landed = fraction["effective_flops"] / fraction["dense_flops"]
    assert abs(landed - target) <= 0.01, landed
    shrunk = m.export(model)
    report = sparsity_report(shrunk, x)["total"]
    assert report["dense_flops"] == pytest.approx(
        fraction["effective_flops"] + _one_head_flops(_empty_head_layers(model), _positions(kind)))


# ------------------------------------------------------------------------------ bad input
def _unchanged(model, before):
    assert not any(isinstance(m, ChannelGate) for m in model.modules())
    assert list(model.state_dict()) == before


def test_unknown_architecture_is_refused_whole():
    config = T.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=128)
    model = T.AutoModel.from_config(config)
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=r"^structured gates: DistilBertModel is an architecture without built-in"):
        sk.sparsify(model, "l0_hc")
    _unchanged(model, before)


def test_grouped_query_attention_gets_one_gate_per_kv_group():
    model = sk.sparsify(_model("llama_gqa"), "dep_l0")
    gates = [g for _, g in transformer_gates(model)]
    # 2 k/v groups of 2 query heads (32 context features each), 128 neurons, per layer
    assert [(g.num_channels, getattr(g, "head_dim", None)) for g in gates] == [(2, 32), (128, None)] * 2
    x = _input("llama")
    model.train()
    _forward(model, x).square().mean().backward()
    measure_positions(model, x)
    link = gates[0].chain  # a group keeps 2 query heads' rows, its k and v rows and 2 heads' columns
    assert (link.unit_weights, link.unit_quadratic) == ((32 + 16 + 16 + 32) * HIDDEN, 64.0)


def test_qkv_rows_that_fit_no_head_grouping_are_refused_whole():
    model = _hf("llama", num_key_value_heads=3)  # 4 query heads cannot share 3 k/v heads
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn: q/k/v rows \[64, 48, 48\] do not fit 4 query heads"):
        sk.sparsify(model, "dep_l0")
    _unchanged(model, before)


def test_heads_that_do_not_divide_are_refused():
    model = _model("transformer")
    model.layers[1].attention.head_dim = 24
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=r"layers\.1\.attention: head_dim 24 does not divide the attention width 64"):
        sk.sparsify(model, "l0_hc")
    _unchanged(model, before)
    del model.layers[1].attention.head_dim  # no head width: the head count must divide
    model.layers[1].attention.num_heads = 3
    with pytest.raises(ValueError, match=r"layers\.1\.attention: 3 heads do not divide the attention width 64"):
        sk.sparsify(model, "l0_hc")
    _unchanged(model, before)


def test_tied_weights_across_a_pruned_dimension_are_refused():
    model = _model("transformer")
    model.layers[1].mlp.fc1.weight = model.layers[0].mlp.fc1.weight
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.fc1's weight is tied to layers\.1\.mlp\.fc1\.weight"):
        sk.sparsify(model, "l0_hc")
    _unchanged(model, before)


def test_a_model_with_no_supported_layers_is_refused():
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="found no Conv2d -> BatchNorm2d pair in Sequential"):
        sk.sparsify(model, "l0_hc")


def test_built_in_transformer_checks_its_input_and_widths():
    model = _model("transformer")
    with pytest.raises(ValueError, match=r"transformer: expected token ids \[B, T <= 8\]"):
        model(torch.randn(2, 8))
    with pytest.raises(ValueError, match="widths for transformer must be 4 positive ints"):
        build_model("transformer", 3, VOCAB, SEQ, widths=[4, 128])


def test_torch_encoder_layers_get_head_and_neuron_gates_and_shrink():
    class Classifier(nn.Module):  # Dep-L0 registers its generator on the model: not a Sequential
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, 96, dropout=0.0, batch_first=True)
            self.net = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                                     nn.Linear(HIDDEN, 3))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    holder = sk.sparsify(Classifier(), "dep_l0")
    gates = [g for _, g in transformer_gates(holder)]
    assert [(type(g).__name__, g.num_channels) for g in gates] == [("HeadGate", HEADS), ("ChannelGate", 96)] * 2
    with torch.no_grad():
        holder.gate_generator.offset[:1] = -30.0  # close head 0 of layer 0
        holder.gate_generator.offset[HEADS:HEADS + 30] = -30.0  # and 30 neurons of layer 0
    x = torch.randn(2, SEQ, HIDDEN)
    holder.eval()
    with torch.no_grad():
        expected = holder(x)
        shrunk = sk.finalize(holder)
        torch.testing.assert_close(shrunk(x), expected, rtol=0, atol=1e-5)
    kept = [max(1, int(g.kept().sum())) for g in gates]  # the generator's first pass may close a few more
    assert kept[0] <= HEADS - 1 and kept[1] <= 96 - 30
    layers = shrunk.net[0].layers
    assert [layers[i].self_attn.num_heads for i in (0, 1)] == kept[0::2]
    assert [layers[i].self_attn.in_proj.out_features for i in (0, 1)] == [3 * 16 * k for k in kept[0::2]]
    assert [layers[i].linear1.out_features for i in (0, 1)] == kept[1::2]
    assert [layers[i].linear2.in_features for i in (0, 1)] == kept[1::2]


def test_gating_twice_is_refused():
    model = sk.sparsify(_model("transformer"), "l0_hc")
    with pytest.raises(ValueError, match="^structured gates: the model already has channel gates$"):
        sk.sparsify(model, "dep_l0")


def test_an_mlp_head_alone_keeps_a_cnn_on_its_conv_gates():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
            self.head = nn.Module()
            self.head.fc1, self.head.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            x = self.bn(self.conv(x)).mean((2, 3))
            return self.head.fc2(self.head.fc1(x).relu())

    model = sk.sparsify(Net(), "l0_hc")
    assert [g.num_channels for g in chained_gates(model)] == [4] and not transformer_gates(model)

