"""soft_threshold keeps the weight's memory format (issue 22, item 8), as torch's elementwise ops do,
on the eager fast path and through the custom ops, with the reference's values and gradients."""
from __future__ import annotations

import pytest
import torch

import sparsekern as sk
from helpers import cpu_backends
from sparsekern.backends import reference
from sparsekern.ops import fast_path

CASES = {
    "channels_last": lambda w: w.to(memory_format=torch.channels_last),
    "transposed": lambda w: w.reshape(8, -1).t().contiguous().t().reshape(w.shape),  # column-major [8, 36]
}


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "custom_op"])
@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
@pytest.mark.parametrize("layout", sorted(CASES))
def test_soft_threshold_keeps_the_memory_format(backend, fast, per_row, layout, monkeypatch):
    monkeypatch.setattr(fast_path, "ENABLED", fast)
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(8, 4, 3, 3, generator=g)
    if layout == "transposed":
        dense = dense.reshape(8, 36)
    s = torch.full((8,) if per_row else (1,), -1.5).add_(torch.rand(8 if per_row else 1, generator=g))
    weight = CASES[layout](dense).requires_grad_()
    assert not weight.is_contiguous() and torch.equal(weight, dense)
    s = s.requires_grad_()
    with sk.use_backend(backend):
        out = sk.soft_threshold(weight, s)
    if layout == "transposed" and per_row:  # rows are not blocks of memory: the kernels' row-major copy
        assert out.is_contiguous()
    else:
        assert out.stride() == weight.stride()  # what torch.sign(weight) * ... would give
    want = reference.soft_threshold(dense, s.detach())
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    want_w, want_s = reference.soft_threshold_backward(grad, dense, s.detach())
    torch.testing.assert_close(weight.grad, want_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.grad, want_s, rtol=1e-5, atol=1e-6)


def test_a_non_dense_weight_still_works():
    base = torch.randn(8, 10)
    weight = base[:, ::2]  # a slice: no dense layout to keep
    want = reference.soft_threshold(weight.contiguous(), torch.zeros(8))
    torch.testing.assert_close(sk.soft_threshold(weight, torch.zeros(8)), want)
