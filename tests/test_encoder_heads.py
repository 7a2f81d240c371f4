"""Head gates on torch's own nn.TransformerEncoderLayer (issue 19): HeadPrunableMultiheadAttention
against nn.MultiheadAttention, l0_hc / dep_l0 placing head and neuron gates and landing a FLOPs
target on a token task, torch.compile, shrink + report, save_shrunk / load_shrunk, bad input."""
from __future__ import annotations

import copy
import os
import types

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import sparsekern as sk
from sparsekern.data.sequences import load_sequences
from sparsekern.nn import ChannelGate, HeadGate
from sparsekern.nn.head_attention import HeadPrunableMultiheadAttention
from sparsekern.pruning.methods.l0 import ChannelL0, DepL0
from sparsekern.pruning.surgery.channel_gating import chained_gates
from sparsekern.pruning.surgery.export.files import ExportFileError
from sparsekern.pruning.surgery.transformer_gating import transformer_gates

pytestmark = pytest.mark.usefixtures("one_thread")
D, HEADS, FF, VOCAB, CLASSES, T = 32, 4, 64, 16, 4, 16


class EncoderClassifier(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoder (2 layers, d_model 32, 4 heads) -> mean -> Linear."""

    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, tokens, padding=None):
        x = self.embed(tokens)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x, src_key_padding_mask=padding)
        return self.head(x.mean(1 if self.batch_first else 0))


def _classifier(batch_first=True, seed=0):
    torch.manual_seed(seed)
    return EncoderClassifier(batch_first)


def _tokens(batch=4, seed=1):
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def _padding(batch=4):
    mask = torch.zeros(batch, T, dtype=torch.bool)
    mask[1, T - 5:] = True
    return mask


def _close(model, heads=(1, 4), neurons=(20, 0)):
    """Closes by hand (l0_hc): per layer the first ``heads[i]`` heads and ``neurons[i]`` neurons."""
    with torch.no_grad():
        gates = [g for _, g in transformer_gates(model)]
        for i, (h, n) in enumerate(zip(heads, neurons)):
            gates[2 * i].log_alpha[:h].fill_(-9.0)
            gates[2 * i + 1].log_alpha[:n].fill_(-9.0)


# ------------------------------------------------------------------ the attention itself
def _mask_cases(b, t):
    causal = nn.Transformer.generate_square_subsequent_mask(t)
    padding = torch.zeros(b, t, dtype=torch.bool)
    padding[1, t - 3:] = True
    boolean = torch.rand(b * HEADS, t, t, generator=torch.Generator().manual_seed(3)) > 0.7
    boolean[..., 0] = False  # every query sees a key
    return {
        "none": {}, "no_weights": {"need_weights": False}, "per_head_weights": {"average_attn_weights": False},
        "causal_hint": {"attn_mask": causal, "is_causal": True, "need_weights": False},
        "causal_weights": {"attn_mask": causal, "is_causal": True},
        "padding": {"key_padding_mask": padding, "need_weights": False},
        "padding_weights": {"key_padding_mask": padding},
        "padding_and_causal": {"key_padding_mask": padding.float().masked_fill(padding, float("-inf")),
                               "attn_mask": causal, "is_causal": True, "need_weights": False},
        "boolean_3d": {"attn_mask": boolean, "need_weights": False},
    }


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(_mask_cases(2, 5)))
def test_head_prunable_attention_matches_torch_values_and_grads(batch_first, case):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, HEADS, batch_first=batch_first)
    mine = HeadPrunableMultiheadAttention.convert(copy.deepcopy(ref))
    assert isinstance(mine, nn.MultiheadAttention) and mine.in_proj_weight is mine.in_proj.weight
    kwargs = _mask_cases(2, 5)[case]
    x = torch.randn(2, 5, D) if batch_first else torch.randn(5, 2, D)
    outs = []
    for module in (ref, mine):
        xi = x.clone().requires_grad_()
        out, weights = module(xi, xi, xi, **kwargs)
        (out.square().sum() + (0 if weights is None else weights.sum())).backward()
        outs.append((out, weights, xi.grad))
    (o1, w1, g1), (o2, w2, g2) = outs
    torch.testing.assert_close(o2, o1, rtol=0, atol=1e-5)
    assert (w1 is None) == (w2 is None)
    if w1 is not None:
        torch.testing.assert_close(w2, w1, rtol=0, atol=1e-5)
    torch.testing.assert_close(g2, g1, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.in_proj.weight.grad, ref.in_proj_weight.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.in_proj.bias.grad, ref.in_proj_bias.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.out_proj.weight.grad, ref.out_proj.weight.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.bfloat16, 2e-2)])
def test_head_prunable_attention_matches_torch_in_other_dtypes(dtype, tol):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, HEADS, batch_first=True).to(dtype)
    mine = HeadPrunableMultiheadAttention.convert(copy.deepcopy(ref))
    x = torch.randn(2, 5, D, dtype=dtype)
    for kwargs in ({}, {"need_weights": False}, {"key_padding_mask": _mask_cases(2, 5)["padding"]["key_padding_mask"]}):
        (o1, w1), (o2, w2) = ref(x, x, x, **kwargs), mine(x, x, x, **kwargs)
        assert o2.dtype == dtype and (w1 is None) == (w2 is None)
        torch.testing.assert_close(o2, o1, rtol=0, atol=tol)
        if w1 is not None:
            torch.testing.assert_close(w2, w1, rtol=0, atol=tol)


@pytest.mark.parametrize("need_weights", [True, False])
def test_head_prunable_attention_dropout_matches_torch_in_training(need_weights):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, HEADS, batch_first=True, dropout=0.3).train()
    mine = HeadPrunableMultiheadAttention.convert(copy.deepcopy(ref))
    x = torch.randn(2, 5, D)
    outs = []
    for module in (ref, mine):
        torch.manual_seed(1)  # the same dropout draws: the same shapes in the same order
        outs.append(module(x, x, x, need_weights=need_weights))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=1e-5)
    if need_weights:  # the probabilities after dropout, as torch returns them
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=0, atol=1e-5)
    torch.manual_seed(2)
    assert not torch.allclose(mine(x, x, x, need_weights=need_weights)[0], outs[1][0])  # dropout is on


def test_head_prunable_attention_cross_and_unbatched_inputs_match_torch():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, HEADS, batch_first=True)
    mine = HeadPrunableMultiheadAttention.convert(copy.deepcopy(ref))
    q, kv = torch.randn(2, 5, D), torch.randn(2, 7, D)
    for args in ((q, kv, kv), (q, kv, torch.randn(2, 7, D)), (q[0], q[0], q[0]), (q[0], kv[0], kv[0])):
        (o1, w1), (o2, w2) = ref(*args), mine(*args)
        torch.testing.assert_close(o2, o1, rtol=0, atol=1e-5)
        torch.testing.assert_close(w2, w1, rtol=0, atol=1e-5)


def test_fewer_heads_than_embed_dim_over_head_dim_run():
    """After shrinking: 3 heads of width 8 in a d_model of 32 (in_proj 72 rows, out_proj 24 inputs)."""
    mha = HeadPrunableMultiheadAttention.convert(nn.MultiheadAttention(D, HEADS, batch_first=True))
    keep = torch.arange(D) >= 8  # drop head 0
    with torch.no_grad():
        expected = mha.out_proj(_context_without_head0(mha, torch.ones(1, 5, D)))
    mha.in_proj.weight = nn.Parameter(mha.in_proj.weight[keep.repeat(3)])
    mha.in_proj.bias = nn.Parameter(mha.in_proj.bias[keep.repeat(3)])
    mha.out_proj.weight = nn.Parameter(mha.out_proj.weight[:, keep])
    mha.num_heads = 3
    with torch.no_grad():
        out, _ = mha(torch.ones(1, 5, D), torch.ones(1, 5, D), torch.ones(1, 5, D), need_weights=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def _context_without_head0(mha, x):
    q, k, v = (y.reshape(1, 5, HEADS, 8).transpose(1, 2) for y in mha.in_proj(x).chunk(3, -1))
    context = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 5, D)
    return context * (torch.arange(D) >= 8)


# ------------------------------------------------------------------ placement, training, FLOPs target
@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_one_gate_per_head_and_neuron_and_the_open_model_is_unchanged(method, batch_first):
    model = _classifier(batch_first).eval()
    x, padding = _tokens(), _padding()
    with torch.no_grad():
        dense = model(x, padding)
    gated = sk.sparsify(model, method)
    gates = [g for _, g in transformer_gates(gated)]
    assert [(type(g), g.num_channels) for g in gates] == [(HeadGate, HEADS), (ChannelGate, FF)] * 2
    assert chained_gates(gated) == gates and hasattr(gated, "gate_generator") == (method == "dep_l0")
    assert all(type(layer.self_attn) is HeadPrunableMultiheadAttention for layer in gated.encoder.layers)
    link = gates[0].chain  # per head: its q, k, v rows, its out_proj columns, two T x T x d products
    assert (link.unit_weights, link.unit_quadratic) == (4 * (D // HEADS) * D, 2.0 * (D // HEADS))
    if method == "l0_hc":
        gated.eval()  # (the new gates are in training mode)
        with torch.no_grad():
            for g in gates:
                g.log_alpha.fill_(9.0)  # every gate open: torch's function
            torch.testing.assert_close(gated(x, padding), dense, rtol=0, atol=1e-5)
    gated.train()
    gated(x, padding).square().mean().backward()
    assert all(p.grad is not None for n, p in gated.named_parameters() if "log_alpha" in n or "generator" in n)


def _config(**kw):
    fields = {"target_flops": None, "target_sparsity": None, "lam": None, "gate_lr": None, "dependency": None,
              "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "recipe": None}
    return types.SimpleNamespace(**{**fields, **kw})


@pytest.mark.parametrize("method", [ChannelL0, DepL0])
def test_training_on_a_token_task_lands_the_flops_target_and_shrinks(method):
    target, steps = 0.5, 60
    train, _, _ = load_sequences("seq_rule")
    tokens, labels = train.tensors[0][:512], train.tensors[1][:512]
    m = method(_config(target_flops=target))
    model = m.sparsify(_classifier())
    example = tokens[:8]
    controller = m.controller(model, steps, example)
    gate_params = [p for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n]
    weights = [p for n, p in model.named_parameters() if not ("log_alpha" in n or "generator" in n)]
    opts = [torch.optim.Adam(gate_params, lr=m.gate_lr()), torch.optim.Adam(weights, lr=3e-3)]
    for step in range(steps):
        batch = slice(64 * step % 512, 64 * step % 512 + 64)
        model.train()
        m.set_gate_modes(model)
        loss = nn.functional.cross_entropy(model(tokens[batch]), labels[batch])
        penalty = m.penalty(model, 1)
        if penalty is not None:
            loss = loss + penalty
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        controller.step()
    report = sk.sparsity_report(model, example)
    landed = report["total"]["effective_flops"] / report["total"]["dense_flops"]
    assert abs(landed - target) <= 0.01, landed
    model.eval()
    with torch.no_grad():
        expected = model(tokens[:32])
    shrunk = m.export(model)
    heads = [layer.self_attn.num_heads for layer in shrunk.encoder.layers]
    kept = [max(1, int(g.kept().sum())) for g in chained_gates(model)][0::2]
    assert heads == kept and sum(heads) < 2 * HEADS  # a 50% FLOPs target removes heads
    with torch.no_grad():
        torch.testing.assert_close(shrunk(tokens[:32]), expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ compile
@pytest.mark.parametrize("method,batch_first", [("dep_l0", True), ("l0_hc", False)])
def test_gated_encoder_compiles_once_with_a_padding_mask(method, batch_first):
    torch._dynamo.reset()
    model = sk.sparsify(_classifier(batch_first), method)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    before = [p.detach().clone() for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n]
    for step in range(3):
        loss = compiled(_tokens(seed=step), _padding()).square().mean() + sk.regularization(model, lam=1e-6,
                                                                                              num_samples=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert counter.frame_count == 1, f"step {step}: {counter.frame_count} compiles"
    after = [p for n, p in model.named_parameters() if "log_alpha" in n or "generator" in n]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))


# ------------------------------------------------------------------ shrink, report, reload
def _gated_and_shrunk(batch_first=True):
    gated = sk.sparsify(_classifier(batch_first), "l0_hc")
    _close(gated)  # layer 0: head 0 and 20 neurons closed; layer 1: every head closed
    return gated.eval(), sk.finalize(gated)


def test_plain_and_gated_encoders_report_the_same_dense_flops():
    plain, x = _classifier(), _tokens()
    before = sk.sparsity_report(plain, x)
    rows = {r["name"]: r for r in before["layers"]}
    assert [r["name"] for r in before["layers"]][:3] == ["encoder.layers.0.self_attn.in_proj",
                                                         "encoder.layers.0.self_attn.attention",
                                                         "encoder.layers.0.self_attn.out_proj"]
    assert rows["encoder.layers.0.self_attn.attention"]["dense_flops"] == 2.0 * T * T * D
    gated = sk.sparsify(plain, "dep_l0")
    after = sk.sparsity_report(gated, x)
    assert [r["dense_flops"] for r in after["layers"]] == [r["dense_flops"] for r in before["layers"]]


@pytest.mark.parametrize("batch_first", [True, False])
def test_shrink_removes_heads_and_neurons_with_the_same_logits_and_report(batch_first):
    gated, shrunk = _gated_and_shrunk(batch_first)
    x, padding = _tokens(), _padding()
    with torch.no_grad():
        for args in ((x,), (x, padding)):
            torch.testing.assert_close(shrunk(*args), gated(*args), rtol=0, atol=1e-5)
    attn0, attn1 = (layer.self_attn for layer in shrunk.encoder.layers)
    assert (attn0.num_heads, attn0.head_dim, attn0.in_proj.weight.shape, attn0.out_proj.weight.shape) == \
        (3, 8, (72, D), (D, 24))
    assert attn1.num_heads == 1 and not attn1.out_proj.weight.any()  # all closed: one zero head stays
    assert shrunk.encoder.layers[0].linear1.out_features == FF - 20
    assert shrunk.sparsekern_heads == {"encoder.layers.0.self_attn": [3, 8], "encoder.layers.1.self_attn": [1, 8]}
    before, after = sk.sparsity_report(gated, x), sk.sparsity_report(shrunk, x)
    one_head = 4 * 8 * D * T + 2 * 8 * T * T  # what the emptied layer keeps: one zero head
    assert after["total"]["dense_flops"] == pytest.approx(before["total"]["effective_flops"] + one_head)
    assert after["total"]["params"] == sum(p.numel() for n, p in shrunk.named_parameters()
                                           if n.endswith("weight") and "norm" not in n and "embed" not in n)
    rows = {r["name"]: r for r in after["layers"]}
    assert rows["encoder.layers.0.self_attn.attention"]["dense_flops"] == 2.0 * T * T * 3 * 8
    assert rows["encoder.layers.0.self_attn.in_proj"]["dense_flops"] == 72 * D * T
    gated_rows = {r["name"]: r for r in before["layers"]}
    assert gated_rows["encoder.layers.0.self_attn.attention"]["effective_flops"] == 2.0 * T * T * 3 * 8


def test_shrunk_encoder_compiles_to_the_same_logits():
    torch._dynamo.reset()
    _, shrunk = _gated_and_shrunk()
    compiled = torch.compile(shrunk, fullgraph=True, backend="aot_eager")
    x, padding = _tokens(), _padding()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, padding), shrunk(x, padding), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_save_shrunk_then_load_shrunk_into_a_fresh_model_gives_the_same_logits(tmp_path, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    _, shrunk = _gated_and_shrunk()
    path = str(tmp_path / f"shrunk.{fmt}")
    sk.save_shrunk(shrunk, path, format=fmt)
    fresh = _classifier(seed=7)  # other weights: everything must come from the file
    reloaded = sk.load_shrunk(fresh, path)
    assert type(fresh.encoder.layers[0].self_attn) is nn.MultiheadAttention  # the argument is left as it was
    assert not reloaded.training and [a.self_attn.num_heads for a in reloaded.encoder.layers] == [3, 1]
    x, padding = _tokens(), _padding()
    with torch.no_grad():  # eval, no grad, a padding mask: torch's fused paths must stay off
        for args in ((x,), (x, padding)):
            torch.testing.assert_close(reloaded(*args), shrunk(*args), rtol=0, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == [f"shrunk.{fmt}"]  # no temp file left


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,why", [({"kdim": 16, "vdim": 16}, "separate q/k/v weights"),
                                        ({"add_bias_kv": True}, "add_bias_kv or add_zero_attn")])
def test_unsupported_attention_is_refused_whole(kwargs, why):
    model = _classifier()
    model.encoder.layers[1].self_attn = nn.MultiheadAttention(D, HEADS, batch_first=True, **kwargs)
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=rf"^structured gates: encoder\.layers\.1\.self_attn (has|uses) {why}"):
        sk.sparsify(model, "l0_hc")
    assert list(model.state_dict()) == before
    assert not any(isinstance(m, (ChannelGate, HeadPrunableMultiheadAttention)) for m in model.modules())


def test_load_shrunk_refuses_missing_corrupt_and_mismatched(tmp_path):
    _, shrunk = _gated_and_shrunk()
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="nope.safetensors'?: no such file"):
        sk.load_shrunk(_classifier(), missing)
    path = str(tmp_path / "m.pt")
    sk.save_shrunk(shrunk, path, format="torch")
    corrupt = str(tmp_path / "corrupt.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(corrupt, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt.pt'? is corrupt"):
        sk.load_shrunk(_classifier(), corrupt)

    class Other(nn.Module):  # not the saved model's class: its modules have other names
        def __init__(self):
            super().__init__()
            self.body = _classifier()

    fresh = Other()
    with pytest.raises(ValueError, match=r"m\.pt'?: the model has no module 'encoder\.layers\.0\.self_attn'"):
        sk.load_shrunk(fresh, path)
    assert not any(isinstance(m, HeadPrunableMultiheadAttention) for m in fresh.modules())
    with pytest.raises(ValueError, match="save_shrunk: model is not shrunk"):
        sk.save_shrunk(_classifier(), str(tmp_path / "x.pt"))
    with pytest.raises(ExportFileError):
        sk.load_shrunk(_classifier(), corrupt)


# ------------------------------------------------------------------ the README's example
def test_readme_encoder_example(tmp_path):
    from test_readme_integrations import _run_block

    scope = _run_block("### Your own `nn.TransformerEncoder`", tmp_path)
    assert abs(scope["session"].metrics()["flops_fraction"] - 0.5) <= 0.01
    shrunk, reloaded = scope["shrunk"], scope["reloaded"]
    assert sum(layer.self_attn.num_heads for layer in shrunk.encoder.layers) < 2 * 4
    assert [layer.self_attn.num_heads for layer in reloaded.encoder.layers] == \
        [layer.self_attn.num_heads for layer in shrunk.encoder.layers]
    tokens = scope["tokens"][:32]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), shrunk(tokens), rtol=0, atol=1e-5)
        gated = scope["model"].eval()
        torch.testing.assert_close(shrunk(tokens), gated(tokens), rtol=0, atol=1e-5)
