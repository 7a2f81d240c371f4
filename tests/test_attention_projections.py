"""nn.MultiheadAttention's input projections (bare Parameters) are sparsified, trained, reported and baked.

References: ``F.multi_head_attention_forward`` of torch with the projection weights computed here
from the formulas (soft threshold, mask), and a plain ``nn.MultiheadAttention`` loading the
finalized state_dict under torch's own keys.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sparsekern as sk
from sparsekern.nn import SparseModule
from sparsekern.nn.attention import SparseMultiheadAttention

pytestmark = pytest.mark.usefixtures("one_thread")
E, HEADS, T, B = 8, 2, 5, 3


def _soft(w, s):
    t = torch.sigmoid(s)
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


def _reference(mha_dense, x, kv, in_w, q_w=None, k_w=None, v_w=None, out_w=None):
    """torch's functional attention on [T, B, E] inputs with the given projection weights."""
    separate = {} if q_w is None else {"use_separate_proj_weight": True, "q_proj_weight": q_w,
                                       "k_proj_weight": k_w, "v_proj_weight": v_w}
    out, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), E, HEADS, in_w, mha_dense.in_proj_bias,
        None, None, False, 0.0, out_w, mha_dense.out_proj.bias, training=False, need_weights=False, **separate)
    return out.transpose(0, 1)


def test_str_in_proj_is_thresholded_and_finalize_gives_torch_keys():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True)
    original = {k: v.clone() for k, v in mha.state_dict().items()}
    sk.sparsify(mha, "str", s_init=-2.0)
    assert type(mha) is SparseMultiheadAttention and isinstance(mha.in_proj, SparseModule)
    assert "in_proj_weight" not in mha.state_dict() and mha.in_proj.bias is None
    assert mha.in_proj_weight is mha.in_proj.weight  # the attribute still reads the raw weight
    torch.testing.assert_close(mha.in_proj.weight, original["in_proj_weight"], rtol=0, atol=0)
    mha.eval()
    x = torch.randn(B, T, E)
    expected = _reference(mha, x, x, _soft(original["in_proj_weight"], mha.in_proj.s),
                          out_w=_soft(original["out_proj.weight"], mha.out_proj.s))
    torch.testing.assert_close(mha(x, x, x, need_weights=False)[0], expected)
    assert (mha.in_proj.effective_weight() == 0).float().mean() > 0.2  # the threshold 0.12 prunes some

    plain = sk.finalize(mha)
    assert type(plain) is nn.MultiheadAttention and not hasattr(plain, "in_proj")
    fresh = nn.MultiheadAttention(E, HEADS, batch_first=True)
    fresh.load_state_dict(plain.state_dict())  # strict: torch's keys and shapes
    torch.testing.assert_close(fresh.in_proj_weight, _soft(original["in_proj_weight"], mha.in_proj.s))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, x, x)[0], mha(x, x, x)[0], rtol=1e-6, atol=1e-6)


def test_separate_q_k_v_projections_train_and_bake():
    """kdim / vdim != embed_dim: three Parameters, three sparse children."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, HEADS, kdim=6, vdim=4, batch_first=True)
    sk.sparsify(mha, "gmp")
    assert [n for n, _ in mha.named_children()] == ["out_proj", "q_proj", "k_proj", "v_proj"]
    assert mha.k_proj.weight.shape == (E, 6) and mha.v_proj.weight.shape == (E, 4)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(mha, name).mask.copy_(torch.rand_like(getattr(mha, name).weight) > 0.5)
    x, k, v = torch.randn(B, T, E), torch.randn(B, 7, 6), torch.randn(B, 7, 4)
    mha.train()
    out = mha(x, k, v)[0]
    out.square().sum().backward()
    for name in ("q_proj", "k_proj", "v_proj"):
        layer = getattr(mha, name)
        assert layer.weight.grad.abs().sum() > 0 and (layer.weight.grad[~layer.mask] == 0).all()
    mha.eval()
    q_w, k_w, v_w = (getattr(mha, n).weight * getattr(mha, n).mask for n in ("q_proj", "k_proj", "v_proj"))
    out_w = mha.out_proj.weight * mha.out_proj.mask
    kq = _reference_separate(mha, x, k, v, q_w, k_w, v_w, out_w)
    with torch.no_grad():
        torch.testing.assert_close(mha(x, k, v)[0], kq)
    plain = sk.finalize(mha)
    fresh = nn.MultiheadAttention(E, HEADS, kdim=6, vdim=4, batch_first=True)
    fresh.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, k, v)[0], kq, rtol=1e-6, atol=1e-6)


def _reference_separate(mha, x, k, v, q_w, k_w, v_w, out_w):
    out, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), E, HEADS, None, mha.in_proj_bias, None, None,
        False, 0.0, out_w, mha.out_proj.bias, training=False, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=q_w, k_proj_weight=k_w, v_proj_weight=v_w)
    return out.transpose(0, 1).detach()


def test_l0_in_proj_samples_gates_in_training():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0, batch_first=True)
    sk.sparsify(layer, "l0")
    in_proj = layer.self_attn.in_proj
    seed, offset = in_proj.noise_seed, in_proj.noise_offset
    x = torch.randn(B, T, E)
    layer.train()(x).square().sum().backward()
    assert in_proj.noise_offset == offset + 3 * E * E  # one gate per weight, drawn once this step
    assert in_proj.log_alpha.grad is not None and in_proj.log_alpha.grad.abs().sum() > 0
    z = sk.hard_concrete(in_proj.log_alpha, seed, offset)
    assert z.shape == (3 * E, E)


def test_report_rows_flops_and_what_stays_dense():
    torch.manual_seed(3)
    model = nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0, batch_first=True)
    sk.sparsify(model, "str", exclude="self_attn.in_proj")
    x = torch.randn(B, T, E)
    report = sk.sparsity_report(model, x)
    rows = {r["name"]: r for r in report["layers"]}
    assert list(rows) == ["self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"]
    assert rows["self_attn.in_proj"]["dense_flops"] == 3 * T * E * E and not rows["self_attn.in_proj"]["sparse"]
    assert rows["self_attn.out_proj"]["dense_flops"] == T * E * E and rows["self_attn.out_proj"]["sparse"]
    assert rows["linear1"]["dense_flops"] == T * E * 16
    dense = {r["name"]: r["reason"] for r in report["left_dense"]}
    assert dense["self_attn"] == "in_proj_weight: not selected (include / exclude / keep_first / keep_last)"
    sk.sparsify(model, "str")  # now the in_proj too (the rest is sparse already and left alone)
    report = sk.sparsity_report(model, x)
    assert report["layers"][0]["sparse"] and report["layers"][0]["params"] == 3 * E * E
    assert {r["name"]: r["reason"] for r in report["left_dense"]}["self_attn"].startswith("in_proj_bias")


def test_gmp_and_target_sparsity_reach_the_in_proj():
    """The controllers find the projections like any sparse layer."""
    torch.manual_seed(4)
    mha = sk.sparsify(nn.MultiheadAttention(E, HEADS, batch_first=True), "gmp")
    sk.GMP(mha, 0.5, 1, end_frac=0.0).step()
    assert (~mha.in_proj.mask).float().mean().item() == pytest.approx(0.5, abs=0.02)
    mha = sk.sparsify(nn.MultiheadAttention(E, HEADS, batch_first=True), "str")
    groups = {g["name"]: g["params"] for g in sk.param_groups(mha, lr=0.1, weight_decay=0.0)}
    assert any(p is mha.in_proj.s for p in groups["thresholds"])


def test_fsdp_shards_the_attention_with_its_projections():
    """FSDP2 gathers parameters in a module's forward; the projections have none of their own (the
    attention applies their weights), so the attention is sharded as one unit with them."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from sparsekern.pruning.train.fsdp import shard_model

    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0, batch_first=True)
    sk.sparsify(layer, "str", s_init=-2.5)
    x = torch.randn(B, T, E)
    expected = layer(x).detach()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_model(layer)
        assert isinstance(layer.self_attn.in_proj.s, DTensor)
        out = layer(x)
        torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
        out.sum().backward()
        assert layer.self_attn.in_proj.s.grad.full_tensor().abs().sum() > 0
    finally:
        dist.destroy_process_group()
