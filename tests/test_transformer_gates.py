"""Head and neuron gates for transformers (issue 19, items 2, 3 and 6): placement, the FLOPs
the gates control, a FLOPs target, shrinking, reload (Hugging Face without sparsekern, the
built-in transformer through build_model), torch.compile, and the bad inputs."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from torch import nn

import sparsekern as sk
from sparsekern.models import build_model
from sparsekern.nn import ChannelGate, HeadGate
from sparsekern.pruning.methods.l0 import ChannelL0, DepL0
from sparsekern.pruning.surgery.channel_gating import chained_gates, measure_positions
from sparsekern.pruning.surgery.export.hf_pretrained import save_shrunk_pretrained
from sparsekern.pruning.surgery.report import sparsity_report
from sparsekern.pruning.surgery.transformer_gating import transformer_gates

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
SEQ, VOCAB, HEADS, HIDDEN = 8, 50, 4, 64


def _hf(kind: str, **extra):
    torch.manual_seed(0)
    common = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": HEADS, "intermediate_size": 128}
    config = {
        "bert": lambda: T.BertConfig(vocab_size=VOCAB, max_position_embeddings=16, **common),
        "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=16,
                                     bos_token_id=0, eos_token_id=0),
        "vit": lambda: T.ViTConfig(image_size=16, patch_size=4, num_channels=3, **common),
        "llama": lambda: T.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=16, num_key_value_heads=HEADS,
                                       **common),
    }[kind]()
    for k, v in extra.items():
        setattr(config, k, v)
    config._attn_implementation = "eager"
    return T.AutoModel.from_config(config).eval()


def _input(kind: str, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    if kind == "vit":
        return torch.randn(batch, 3, 16, 16, generator=gen)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen)


class _Out(nn.Module):
    """A Hugging Face model's last hidden state as one tensor (what the tests compare)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


MODELS = ["bert", "gpt2", "vit", "llama", "transformer"]
FFN = {"bert": 128, "gpt2": 4 * HIDDEN, "vit": 128, "llama": 128, "transformer": 128}


def _model(kind: str):
    if kind == "transformer":
        torch.manual_seed(0)
        return build_model("transformer", 3, VOCAB, SEQ).eval()
    return _hf(kind)


def _forward(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


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


def _close_some(model):
    """Closes gates by hand: in gate i, the first (i % 3) + 1 channels (a whole layer's heads in one)."""
    with torch.no_grad():
        for i, (_, g) in enumerate(transformer_gates(model)):
            n = g.num_channels if i == 2 else i % 3 + 1
            g.log_alpha[:n].fill_(-9.0)


def _weights(report):
    return sum(r["params"] for r in report["layers"])


@pytest.mark.parametrize("kind", MODELS)
def test_shrunk_model_matches_the_gated_one_and_its_report(kind, tmp_path):
    gated = sk.sparsify(_model(kind), "l0_hc")
    _close_some(gated)
    x = _input(kind)
    gated.eval()
    with torch.no_grad():
        expected = _forward(gated, x)
    gated_report = sparsity_report(gated, x, count_closed_channels=True)["total"]
    shrunk = sk.finalize(gated)
    assert not any(isinstance(m, ChannelGate) for m in shrunk.modules())
    with torch.no_grad():
        torch.testing.assert_close(_forward(shrunk, x), expected, rtol=0, atol=1e-5)
    report = sparsity_report(shrunk, x)
    # what the gated model's report says is left is what the shrunk model has (one head with
    # zeroed output columns stays where a layer's heads all closed, and counts)
    kept_heads = [n for n, _ in shrunk.sparsekern_heads.values()]
    assert 1 in kept_heads
    empty = [s for s, g in transformer_gates(gated) if isinstance(g, HeadGate) and not g.kept().any()]
    extra = sum(3 * s.head_dim * HIDDEN + s.head_dim * HIDDEN for s in empty)
    assert report["total"]["params"] == gated_report["nonzeros"] + extra
    head_flops = sum(4 * s.head_dim * HIDDEN * r + 2 * s.head_dim * r * r for s in empty
                     for r in [(16 // 4) ** 2 + 1 if kind == "vit" else SEQ])
    assert report["total"]["dense_flops"] == pytest.approx(gated_report["effective_flops"] + head_flops)
    assert any(r["type"] == "attention" for r in report["layers"])
    if kind == "transformer":  # build_model rebuilds the shrunk shape, and the state_dict loads into it
        rebuilt = build_model("transformer", 3, VOCAB, SEQ, widths=shrunk.transformer_widths()).eval()
        rebuilt.load_state_dict(shrunk.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt(x), _forward(shrunk, x))
        return
    save_shrunk_pretrained(shrunk, str(tmp_path))
    with torch.no_grad():
        torch.save((x, _forward(shrunk, x)), tmp_path / "expected.pt")
    # a fresh interpreter where importing sparsekern fails: only torch and transformers load it
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "sparsekern":
                    raise ImportError("sparsekern is blocked")
        sys.meta_path.insert(0, Block())
        import torch, transformers
        model = transformers.AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        x, expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            got = model(x).last_hidden_state
        # the reload runs HF's default attention kernel (sdpa), the test the eager one
        assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()
        print("params", sum(p.numel() for p in model.parameters()), type(model).__name__)
    """)
    env = {**os.environ, "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"params {sum(p.numel() for p in shrunk.parameters())} Shrunk" in done.stdout


def _config(**kw):
    fields = {"target_flops": None, "target_sparsity": None, "lam": None, "gate_lr": None, "dependency": None,
              "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "recipe": None}
    return types.SimpleNamespace(**{**fields, **kw})


@pytest.mark.parametrize("method", [ChannelL0, DepL0])
@pytest.mark.parametrize("kind", MODELS)
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
    assert report["dense_flops"] == pytest.approx(fraction["effective_flops"], rel=1e-6, abs=1.0) or \
        report["dense_flops"] >= fraction["effective_flops"]  # a layer with every head closed keeps one


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
@pytest.mark.parametrize("kind", MODELS)
def test_unstructured_methods_train_and_finalize(kind, method):
    model = sk.sparsify(_model(kind), method)
    x = _input(kind)
    model.train()
    _forward(model, x).square().mean().backward()
    model.eval()
    with torch.no_grad():
        expected = _forward(model, x)
        torch.testing.assert_close(_forward(sk.finalize(model, shrink=False), x), expected, rtol=1e-5, atol=1e-5)


def test_gated_transformer_compiles_once_and_trains():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    model = sk.sparsify(_model("transformer"), "dep_l0")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(4):
        x, y = torch.randint(0, VOCAB, (4, SEQ), generator=gen), torch.randint(0, 3, (4,), generator=gen)
        loss = nn.functional.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert counter.frame_count == 1
    assert torch.isfinite(loss)


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


def test_grouped_query_attention_is_refused_whole():
    model = _hf("llama", num_key_value_heads=2)
    before = list(model.state_dict())
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn: q/k/v give 128 rows, not 3 x 64 \(grouped-query"):
        sk.sparsify(model, "dep_l0")
    _unchanged(model, before)


def test_heads_that_do_not_divide_are_refused():
    model = _model("transformer")
    model.layers[1].attention.num_heads = 3
    before = list(model.state_dict())
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
