"""A Hugging Face GPT-2 (tiny, built from a config): sparsify keeps lm_head tied to wte, swaps
the Conv1D layers (in their [in, out] layout), and finalize gives back a GPT-2 state_dict."""
from __future__ import annotations

import io

import pytest
import torch

import sparsekern as sk
from sparsekern.nn import SparseModule

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

from sparsekern.nn import conv1d as sconv  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ("str", "l0", "gmp")


def _config():
    return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0,
                      eos_token_id=0)


def _sparse_gpt2(method: str):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_config())
    sk.sparsify(model, method)
    with torch.no_grad():  # as after some training: weights well away from dense
        for m in model.modules():
            if hasattr(m, "s"):
                m.s.fill_(-4.5)
            elif hasattr(m, "mask"):
                m.mask.copy_(torch.rand_like(m.weight) > 0.5)
            elif isinstance(m, SparseModule):
                m.log_alpha.normal_(0.0, 3.0)
    return model.eval()


def _ids():
    return torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(3))


def _conv1d_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D)]


@pytest.mark.parametrize("method", METHODS)
def test_sparsify_keeps_the_tie_and_swaps_conv1d(method):
    model = _sparse_gpt2(method)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert type(model.lm_head) is torch.nn.Linear
    names = _conv1d_names(model)
    assert len(names) == 8  # c_attn, c_proj, c_fc, mlp c_proj per block
    for name in names:
        m = model.get_submodule(name)
        assert isinstance(m, SparseModule) and isinstance(m, Conv1D), name
        assert m.weight.shape == (m.nx, m.nf)  # HF's layout, HF's keys
    assert 0.2 < sk.global_sparsity(model) < 0.9


@pytest.mark.parametrize("method", METHODS)
def test_no_grad_matches_grad_and_finalize_loads_into_gpt2(method):
    model = _sparse_gpt2(method)
    ids = _ids()
    with_grad = model(ids).logits.detach()
    with torch.no_grad():
        no_grad = model(ids).logits
    torch.testing.assert_close(no_grad, with_grad, rtol=1e-5, atol=1e-5)
    final = sk.finalize(model, shrink=False)
    assert final.lm_head.weight is final.transformer.wte.weight
    for m in final.modules():
        assert not isinstance(m, SparseModule)
    assert all(type(final.get_submodule(n)) is Conv1D for n in _conv1d_names(final))
    fresh = GPT2LMHeadModel(_config()).eval()
    fresh.load_state_dict(final.state_dict())  # strict: no missing or unexpected keys
    with torch.no_grad():
        final_logits = final(ids).logits
        torch.testing.assert_close(fresh(ids).logits, final_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final_logits, no_grad, rtol=1e-5, atol=1e-5)


def test_report_lists_the_tied_head_as_left_dense():
    model = _sparse_gpt2("str")
    report = sk.sparsity_report(model, _ids())
    rows = {r["name"]: r for r in report["layers"]}
    assert all(rows[n]["sparse"] for n in _conv1d_names(model))
    assert rows["transformer.h.0.mlp.c_fc"]["dense_flops"] == 10 * 64 * 256  # tokens x in x out
    dense = {r["name"]: r["reason"] for r in report["left_dense"]}
    assert dense["lm_head"] == "tied to transformer.wte.weight"
    assert dense["transformer.wpe"] == "embedding" and dense["transformer.ln_f"] == "normalization"
    text = sk.format_report(report)
    assert "left dense: lm_head (Linear, 6400 params): tied to transformer.wte.weight" in text


def _twin_pair(method: str, opts: dict):
    """A sparse Conv1D and a sparse Linear with the transposed weight and the same gate state."""
    torch.manual_seed(0)
    conv = Conv1D(6, 5)
    lin = torch.nn.Linear(5, 6)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(torch.randn(6))
        conv.bias.copy_(lin.bias)
    sc = sconv.sparse_conv1d_types()[method].from_dense(conv, **opts)
    sl = {"str": sk.nn.STRLinear, "l0": sk.nn.L0Linear, "gmp": sk.nn.MaskedLinear}[method].from_dense(lin, **opts)
    with torch.no_grad():
        if method == "str":
            sl.s.copy_(torch.linspace(-4, -1, sl.s.numel()))
            sc.s.copy_(sl.s)
        elif method == "gmp":
            sl.mask.copy_(torch.rand_like(sl.weight) > 0.5)
            sc.mask.copy_(sl.mask.t())
        else:
            sl.log_alpha.normal_(0.0, 3.0)
            sc.log_alpha.copy_(sl.log_alpha.t() if sl.granularity == "weight" else sl.log_alpha)
            sc.noise_state.copy_(sl.noise_state)
    return sc, sl


TWINS = [("str", {}), ("str", {"per_channel": True}), ("gmp", {}), ("l0", {"granularity": "in"}),
         ("l0", {"granularity": "out"}), ("l0", {"granularity": "out", "mode": "activation"})]


@pytest.mark.parametrize("method,opts", TWINS)
def test_conv1d_layers_compute_what_the_linear_ones_do(method, opts):
    sc, sl = _twin_pair(method, opts)
    x = torch.randn(3, 4, 5)
    for training in (False, True):
        sc.train(training), sl.train(training)
        torch.testing.assert_close(sc(x), sl(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sc.effective_weight(), sl.effective_weight().t())
    assert sc.nonzero_mask().sum() == sl.nonzero_mask().sum()
    if method == "l0":
        torch.testing.assert_close(sc.l0_penalty(0.1, prior_prec=0.5), sl.l0_penalty(0.1, prior_prec=0.5))
    dense = sc.to_dense()
    assert type(dense) is Conv1D
    torch.testing.assert_close(dense(x), sc.eval()(x))


def test_sparse_conv1d_pickles():
    model = _sparse_gpt2("l0")
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(again(_ids()).logits, model(_ids()).logits)
