"""gated_activation on channels-last x (issue 18, defect 8): the CPU and CUDA kernels index NHWC
memory in place, with the values and gradients of the NCHW call bit for bit and the output in x's
format. The CUDA test needs a GPU (the CUDA code is compile-checked by .ci/nvcc_check.sh)."""
from __future__ import annotations

import pytest
import torch

from helpers import HC, compiled_cpu_backends, generator

pytestmark = pytest.mark.skipif("cpu" not in compiled_cpu_backends(), reason="needs the compiled CPU extension")

SHAPES = [(2, 3, 4, 5), (4, 16, 3, 3), (1, 7, 1, 9), (3, 5, 129, 130), (2, 64, 7, 7)]
SEED, OFFSET = 2**63 + 11, 2**64 - 40


def _ops():
    return torch.ops.sparsekern_C


def _inputs(shape, dtype, fmt):
    gen = generator("channels-last", shape, str(dtype))
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    la = (torch.randn(shape[1], generator=gen) * 2).to(torch.float64 if dtype == torch.float64 else torch.float32)
    grad = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    return x, la, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channels_last_equals_nchw_bit_for_bit(shape, dtype):
    x, la, grad = _inputs(shape, dtype, torch.channels_last)
    hc = (SEED - 2**64, OFFSET - 2**64, *HC.values())
    out = _ops().gated_activation(x, la, *hc)
    want = _ops().gated_activation(x.contiguous(), la, *hc)
    assert out.stride() == x.stride(), "output not in the input's memory format"
    assert torch.equal(out, want)
    gx, gla = _ops().gated_activation_backward(grad, x, la, *hc)
    wx, wla = _ops().gated_activation_backward(grad.contiguous(), x.contiguous(), la, *hc)
    assert gx.stride() == x.stride() and torch.equal(gx, wx)
    assert torch.equal(gla, wla), (gla - wla).abs().max()


def test_channels_last_grad_in_another_layout():
    x, la, grad = _inputs((2, 6, 5, 4), torch.float32, torch.channels_last)
    hc = (SEED - 2**64, OFFSET - 2**64, *HC.values())
    gx, gla = _ops().gated_activation_backward(grad.contiguous(), x, la, *hc)
    wx, wla = _ops().gated_activation_backward(grad.contiguous(), x.contiguous(), la, *hc)
    assert torch.equal(gx, wx) and torch.equal(gla, wla)


def test_channels_last_1d_and_public_op():
    """[B, C, L] stored as [B, L, C], and the public op with autograd (the eager fast path)."""
    import sparsekern

    base = torch.randn(3, 40, 6, generator=generator("cl-1d"))  # [B, L, C]
    x = base.transpose(1, 2)  # [B, C, L], channels last in memory
    la = torch.randn(6)
    hc = (SEED - 2**64, OFFSET - 2**64, *HC.values())
    assert torch.equal(_ops().gated_activation(x, la, *hc), _ops().gated_activation(x.contiguous(), la, *hc))
    with sparsekern.use_backend("cpu"):
        xs = [t.detach().clone().requires_grad_() for t in (x, x.contiguous())]
        las = [la.clone().requires_grad_() for _ in range(2)]
        outs = [sparsekern.gated_activation(a, b, SEED, OFFSET) for a, b in zip(xs, las)]
        for o in outs:
            (o * o).sum().backward()
    assert torch.equal(outs[0], outs[1]) and torch.equal(xs[0].grad, xs[1].grad)
    assert torch.equal(las[0].grad, las[1].grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cuda_channels_last_equals_nchw_bit_for_bit(shape, dtype):
    """The CUDA row kernel reads channels-last x in place (RowShape::cl_channels): same threads,
    elements and sums as the NCHW call, so the same bits; output in x's memory format."""
    from sparsekern.backends import extension

    if not extension.compiled_has("CUDA"):
        pytest.skip("the compiled extension has no CUDA kernels")
    x, la, grad = (t.cuda() for t in _inputs(shape, dtype, torch.channels_last))
    hc = (SEED - 2**64, OFFSET - 2**64, *HC.values())
    out = _ops().gated_activation(x, la, *hc)
    assert out.stride() == x.stride() and torch.equal(out, _ops().gated_activation(x.contiguous(), la, *hc))
    gx, gla = _ops().gated_activation_backward(grad, x, la, *hc)
    wx, wla = _ops().gated_activation_backward(grad.contiguous(), x.contiguous(), la, *hc)
    assert gx.stride() == x.stride() and torch.equal(gx, wx) and torch.equal(gla, wla)
