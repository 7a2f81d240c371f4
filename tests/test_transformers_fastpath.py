"""Sparsified torch transformer modules compute with their sparse weights on every path.

nn.TransformerEncoderLayer / nn.TransformerEncoder / nn.MultiheadAttention have fused "fast
paths" (eval, no grad: no_grad, inference_mode, compiled models) that read the raw weights,
and MultiheadAttention reads ``out_proj.weight`` itself even on its ordinary path. Each case
compares those paths with the grad-enabled eval forward, and with a dense twin whose weights
are the sparse layers' effective ones (the grad-enabled forward itself must use them).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import sparsekern as sk
from sparsekern.nn import SparseModule
from sparsekern.nn.attention import SparseMultiheadAttention

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ("str", "l0", "gmp")
D, HEADS, FF = 16, 4, 32


def _make_sparse(model: nn.Module, method: str) -> nn.Module:
    """Sparsify and move the weights well away from dense (as 20 training steps would)."""
    torch.manual_seed(1)
    sk.sparsify(model, method)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, SparseModule):
                continue
            if method == "str":
                m.s.fill_(-2.5)  # threshold 0.076: about half of these weights
            elif method == "gmp":
                m.mask.copy_(torch.rand_like(m.weight) > 0.5)
            else:
                m.log_alpha.normal_(0.0, 3.0)  # some gates closed, some open, some in between
    return model.eval()


def _dense_twin(model: nn.Module) -> nn.Module:
    """The same model with plain layers holding the effective weights (the expected function)."""
    return sk.finalize(model, shrink=False)


def _layer():
    return nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)


def _encoder():
    return nn.TransformerEncoder(_layer(), 2, enable_nested_tensor=True)


def _mha():
    return nn.MultiheadAttention(D, HEADS, batch_first=True)


def _run(model, x, mask=None):
    if isinstance(getattr(model, "_orig_mod", model), nn.MultiheadAttention):
        return model(x, x, x)[0]
    return model(x, src_key_padding_mask=mask) if mask is not None else model(x)


BUILDERS = {"layer": _layer, "encoder": _encoder, "mha": _mha}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_no_grad_and_inference_mode_use_the_sparse_weights(method, kind):
    torch.manual_seed(0)
    model = BUILDERS[kind]()
    dense = copy.deepcopy(model).eval()
    _make_sparse(model, method)
    x = torch.randn(3, 5, D)
    expected = _run(_dense_twin(model), x).detach()
    assert (expected - _run(dense, x)).abs().max() > 1e-2  # sparse enough for the checks to mean something
    with_grad = _run(model, x).detach()
    torch.testing.assert_close(with_grad, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        no_grad = _run(model, x)
    with torch.inference_mode():
        inference = _run(model, x)
    torch.testing.assert_close(no_grad, with_grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inference, with_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_padded_batches_through_the_encoder(method):
    """A key-padding mask sends a dense encoder down its nested-tensor path; a sparse one must not."""
    torch.manual_seed(0)
    model = _make_sparse(_encoder(), method)
    x = torch.randn(3, 5, D)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 3:] = True
    with_grad = _run(model, x, mask).detach()
    with torch.no_grad():
        no_grad = _run(model, x, mask)
    keep = ~mask
    torch.testing.assert_close(no_grad[keep], with_grad[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["layer", "mha"])
def test_compiled_model_uses_the_sparse_weights(method, kind):
    torch.manual_seed(0)
    model = _make_sparse(BUILDERS[kind](), method)
    x = torch.randn(3, 5, D)
    expected = _run(model, x).detach()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got = _run(compiled, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_attention_trains_its_sparse_out_proj(method):
    """MultiheadAttention applies out_proj's (thresholded / masked / sampled) weight in training too."""
    torch.manual_seed(0)
    mha = _make_sparse(_mha(), method).train()
    assert isinstance(mha, SparseMultiheadAttention) and isinstance(mha.out_proj, SparseModule)
    x = torch.randn(3, 5, D)
    out = mha(x, x, x)[0]
    out.square().sum().backward()
    trained = {"str": "s", "l0": "log_alpha", "gmp": "weight"}[method]
    assert getattr(mha.out_proj, trained).grad is not None
    if method == "gmp":  # pruned weights get no gradient through the mask
        assert (mha.out_proj.weight.grad[~mha.out_proj.mask] == 0).all()


def test_sparsify_swaps_out_proj_and_finalize_restores_torch_types():
    torch.manual_seed(0)
    model = _make_sparse(_encoder(), "str")
    attn = model.layers[0].self_attn
    assert type(attn) is SparseMultiheadAttention and isinstance(attn, nn.MultiheadAttention)
    assert model.use_nested_tensor is False
    final = sk.finalize(model, shrink=False)
    for m in final.modules():
        assert not isinstance(m, (SparseModule, SparseMultiheadAttention))
    out_proj = final.layers[0].self_attn.out_proj
    assert type(final.layers[0].self_attn) is nn.MultiheadAttention
    assert type(out_proj) is NonDynamicallyQuantizableLinear
    fresh = _encoder()
    fresh.load_state_dict(final.state_dict())
    x = torch.randn(2, 4, D)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_other_models_keep_the_fast_path():
    """No global switch: a dense encoder next to a sparsified one still takes the fused path."""
    dense = _layer().eval()
    sk.sparsify(_layer(), "str")
    assert torch.backends.mha.get_fastpath_enabled()
    assert not any(len(m._forward_pre_hooks) for m in dense.modules())


def test_activation_mode_projections_are_refused_before_any_swap():
    """The attention applies both projections' weights itself: per-example gates cannot reach them."""
    model = _layer()
    with pytest.raises(ValueError, match=r"sparsify: self_attn.in_proj: .*mode='activation'"):
        sk.sparsify(model, "l0", mode="activation", granularity="in")
    assert not any(isinstance(m, SparseModule) for m in model.modules())
    with pytest.raises(ValueError, match=r"sparsify: self_attn.out_proj: .*mode='activation'"):
        sk.sparsify(model, "l0", mode="activation", granularity="in", exclude="self_attn.in_proj")
    assert not any(isinstance(m, SparseModule) for m in model.modules())
    sk.sparsify(model, "l0", mode="activation", granularity="in", exclude=["self_attn.in_proj", "self_attn.out_proj"])
    assert isinstance(model.linear1, SparseModule) and not isinstance(model.self_attn.out_proj, SparseModule)
    assert isinstance(model.self_attn._parameters["in_proj_weight"], nn.Parameter)


def test_pickle_and_deepcopy_keep_the_guard():
    model = _make_sparse(_layer(), "str")
    x = torch.randn(2, 4, D)
    expected = model(x).detach()
    for clone in (copy.deepcopy(model), _reload(model)):
        with torch.no_grad():
            torch.testing.assert_close(clone(x), expected, rtol=1e-5, atol=1e-5)


def _reload(model):
    import io
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)
