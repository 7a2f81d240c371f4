"""Shrinking a gated transformer (issue 19, item 3): the shrunk model computes the gated eval
model's function, has the weights and FLOPs its report said, and reloads: Hugging Face models
through ``AutoModel.from_pretrained`` in a process where sparsekern cannot be imported, the
built-in transformer through ``build_model(widths=)``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sparsekern as sk
from sparsekern.nn import ChannelGate
from sparsekern import save_shrunk_pretrained
from sparsekern.pruning.surgery.report import sparsity_report
from sparsekern.pruning.surgery.transformer_sites import AttentionSite, transformer_sites
from transformer_cases import (HEADS, MODELS, SEQ, VOCAB, _close_some, _empty_head_layers, _forward, _input, _model, _one_group_weights,
                               _one_head_flops, _positions, build_model)

pytestmark = pytest.mark.usefixtures("one_thread")


def _shrunk(kind: str):
    """(gated model in eval mode with some gates closed by hand, finalize's shrunk copy, input)."""
    gated = sk.sparsify(_model(kind), "l0_hc")
    _close_some(gated)
    gated.eval()
    return gated, sk.finalize(gated), _input(kind)


@pytest.mark.parametrize("kind", MODELS + ["llama_gqa"])
def test_shrunk_model_matches_the_gated_one_and_its_report(kind):
    gated, shrunk, x = _shrunk(kind)
    with torch.no_grad():
        expected = _forward(gated, x)
    gated_report = sparsity_report(gated, x, count_closed_channels=True)["total"]
    assert not any(isinstance(m, ChannelGate) for m in shrunk.modules())
    with torch.no_grad():
        torch.testing.assert_close(_forward(shrunk, x), expected, rtol=0, atol=1e-5)
    report = sparsity_report(shrunk, x)
    # what the gated model's report says is left is what the shrunk model has (one head with
    # zeroed output columns stays where a layer's heads all closed, and counts)
    empty = _empty_head_layers(gated)
    assert empty and all(shrunk.sparsekern_heads[s.name][0] == s.heads // s.groups for s in empty)
    assert report["total"]["params"] == gated_report["nonzeros"] + _one_group_weights(empty)
    assert report["total"]["dense_flops"] == pytest.approx(gated_report["effective_flops"]
                                                           + _one_head_flops(empty, _positions(kind)))
    assert any(r["type"] == "attention" for r in report["layers"])
    # the shrunk model's attentions are read with their kept head counts (head width first)
    heads = {s.name: s.heads for s in transformer_sites(shrunk) if isinstance(s, AttentionSite)}
    assert heads == {name: shrunk.sparsekern_heads.get(name, [HEADS])[0] for name in heads}
    folded = sk.finalize(gated, shrink=False)  # the gates folded in, every head and neuron kept
    assert [(n, p.shape) for n, p in folded.state_dict().items()] == \
        [(n, p.shape) for n, p in _model(kind).state_dict().items()]
    with torch.no_grad():
        torch.testing.assert_close(_forward(folded, x), expected, rtol=0, atol=1e-5)
    if kind == "transformer":  # build_model rebuilds the shrunk shape, and the state_dict loads into it
        rebuilt = build_model("transformer", 3, VOCAB, SEQ, widths=shrunk.transformer_widths()).eval()
        rebuilt.load_state_dict(shrunk.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt(x), _forward(shrunk, x))


HF = [kind for kind in MODELS if kind != "transformer"] + ["llama_gqa"]
# A fresh interpreter where importing sparsekern fails: only torch and transformers load the models.
RELOAD = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "sparsekern":
            raise ImportError("sparsekern is blocked")
sys.meta_path.insert(0, Block())
import torch, transformers
torch.set_num_threads(1)  # as the test: the same kernels, so the same bits
for directory in sys.argv[1:]:
    model = transformers.AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    x, expected = torch.load(directory + "/expected.pt")
    with torch.no_grad():
        default = model(x).last_hidden_state  # HF's default attention kernel (sdpa)
        model.set_attn_implementation("eager")  # the one the test ran
        got = model(x).last_hidden_state
    assert torch.allclose(default, expected, rtol=0, atol=1e-5), (directory, (default - expected).abs().max())
    assert torch.equal(got, expected), (directory, (got - expected).abs().max())
    print(directory, "params", sum(p.numel() for p in model.parameters()), type(model).__name__)
"""


def test_saved_models_reload_without_sparsekern(tmp_path):
    params = {}
    for kind in HF:
        _, shrunk, x = _shrunk(kind)
        directory = tmp_path / kind
        save_shrunk_pretrained(shrunk, str(directory))
        with torch.no_grad():
            torch.save((x, _forward(shrunk, x)), directory / "expected.pt")
        params[kind] = sum(p.numel() for p in shrunk.parameters())
    env = {**os.environ, "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", RELOAD, *(str(tmp_path / k) for k in HF)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for kind in HF:
        assert f"{tmp_path / kind} params {params[kind]} Shrunk" in done.stdout
