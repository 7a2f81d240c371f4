"""The GPU backends (`cuda`, `triton`) on CUDA tensors: against the reference, against
each other, bit-identical gates, repeatable reductions, sizes up to 2**26 (and one
case past 2**31 elements). Skipped without a GPU.
"""
from __future__ import annotations

import pytest
import torch

import sparsekern
from helpers import (
    CASES,
    HC,
    LOW_PRECISION,
    Case,
    _param_shape,
    assert_flash_close,
    check_exact_masks,
    converted,
    dtype_id,
    generator,
    kernel_outputs,
    magnitude,
    make_inputs,
    public_outputs,
    terms_per_output,
)
from sparsekern import backends
from sparsekern.backends import reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_BACKENDS = ("cuda", "triton")
BACKEND = pytest.mark.parametrize("backend", GPU_BACKENDS)
DTYPES = pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
BIG = [
    Case("soft_threshold", (2**26,), "tensor"),
    Case("soft_threshold", (2**13, 2**13), "row"),
    Case("soft_threshold", (1000, 3, 3, 3), "row"),  # inner 27: unaligned rows, scalar path
    Case("hard_concrete", (2**26 - 3,)),  # odd: a partial last chunk
    Case("hard_concrete_eval", (2**24 + 1,)),
    Case("l0_norm", (2**26,)),
    Case("gated_weight", (2**12, 2**14), "full"),
    Case("gated_weight", (2**12, 2**14), "row"),
    Case("gated_weight", (4097, 9), "row"),
    Case("gated_activation", (256, 64, 64, 64)),
    Case("gated_activation", (512, 1000)),  # inner 1: one element per gate
    Case("gated_activation", (128, 64, 7, 7)),
]
# Outputs that are sums over many elements (reduced in different orders by the two backends).
REDUCED = {("l0_norm", 0), ("soft_threshold", 2), ("gated_activation", 2), ("gated_weight-row", 2)}


_TINY_ATOL = 8 * torch.finfo(torch.float32).eps  # times the output's magnitude: denormals flushed to 0


def _need(backend: str) -> None:
    if not backends.is_available(backend):
        pytest.skip(f"backend {backend!r} is not available (cuda: compiled extension without CUDA?)")


def _cuda(inp: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inp.items()}


def _big_inputs(case: Case, dtype) -> dict:
    """make_inputs' distributions, drawn on the GPU (2**26 elements in float64 on the CPU are slow)."""
    gen = torch.Generator(device="cuda").manual_seed(generator("gpu-big", case, dtype).initial_seed())

    def randn(shape, scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=gen, device="cuda", dtype=torch.float64) * scale + shift).to(dtype)

    inp = {"main": randn(case.shape)} if case.op in ("soft_threshold", "gated_weight", "gated_activation") else {}
    soft = case.op == "soft_threshold"
    inp["param"] = randn(_param_shape(case), 0.5 if soft else 1.5, -1.0 if soft else 0.0)
    inp["grad"] = randn(() if case.op == "l0_norm" else case.shape)
    inp["seed"], inp["offset"] = 2**63 + 12345, 2**32 - 1000
    return inp


def _check_vs_reference(case, inp, dtype, actual, where):
    lowp = kernel_outputs(reference, case, inp)
    exact = kernel_outputs(reference, case, converted(inp, torch.float64))
    scales = kernel_outputs(reference, case, converted(inp, torch.float64, absolute=True))
    for i, (a, lo, ex, sc) in enumerate(zip(actual, lowp, exact, scales)):
        assert a.dtype == lo.dtype and a.shape == lo.shape, f"{where} output {i}: {a.dtype}{tuple(a.shape)}"
        assert_flash_close(a, lo, ex, dtype=dtype, scale=magnitude(sc), terms=terms_per_output(case, inp, ex),
                           what=f"{where} output {i}")


@BACKEND
@DTYPES
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_match_reference(backend, dtype, case):
    _need(backend)
    inp = _cuda(make_inputs(case, dtype, generator("gpu-kernel", case, dtype)))
    actual = kernel_outputs(backends.module(backend), case, inp)
    _check_vs_reference(case, inp, dtype, actual, f"{backend} kernels")
    check_exact_masks(case, inp, actual)


@BACKEND
@DTYPES
@pytest.mark.parametrize("case", BIG, ids=str)
def test_big_kernels_match_reference(backend, dtype, case):
    _need(backend)
    inp = _big_inputs(case, dtype)
    actual = kernel_outputs(backends.module(backend), case, inp)
    _check_vs_reference(case, inp, dtype, actual, f"{backend} kernels")
    check_exact_masks(case, inp, actual)


@DTYPES
@pytest.mark.parametrize("case", BIG + [c for c in CASES if c.shape in ((7, 13), (1023,), (2, 3, 5, 7))], ids=str)
def test_cuda_and_triton_agree(dtype, case):
    """The noise contract exactly: the same uniforms (test_uniform_bit_identical) and the same gate
    decisions (closed gates exactly 0, open ones pass the input exactly) wherever the float64 sample
    is clear of the clamp boundary. The values in between are not promised bit for bit: nvcc
    contracts a*b+c into fma by default, newer Triton does not (and the explicit fma in _math.py
    covers only the gate's own multiply-add), and Triton's libdevice flushes denormal
    intermediates. So each backend is held to the flash-attention rule against the float64
    reference (helpers.assert_flash_close), and group sums to rounding of each other."""
    _need("cuda")
    _need("triton")
    inp = _big_inputs(case, dtype) if case in BIG else _cuda(make_inputs(case, dtype, generator("gpu-pair", case)))
    ours = kernel_outputs(backends.module("cuda"), case, inp)
    theirs = kernel_outputs(backends.module("triton"), case, inp)
    key = case.op + ("-row" if case.op == "gated_weight" and case.mode == "row" else "")
    for outs in (ours, theirs):
        check_exact_masks(case, inp, outs)
    if case not in BIG:  # the float64 reference of 2**26-element cases runs in test_big_kernels_match_reference
        _check_vs_reference(case, inp, dtype, theirs, "triton kernels")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if (key, i) in REDUCED:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * magnitude(a), msg=f"{case} output {i}")
        else:  # elementwise: a few ulp of the output dtype at most
            torch.testing.assert_close(a, b, rtol=4 * torch.finfo(a.dtype).eps, atol=_TINY_ATOL * magnitude(a),
                                       msg=f"{case} output {i}: cuda and triton differ by more than rounding")


@BACKEND
@pytest.mark.parametrize("case", BIG, ids=str)
def test_repeat_runs_bit_identical(backend, case):
    _need(backend)
    inp = _big_inputs(case, torch.bfloat16)
    mod = backends.module(backend)
    for a, b in zip(kernel_outputs(mod, case, inp), kernel_outputs(mod, case, inp)):
        assert torch.equal(a, b), f"{backend} {case}: a repeat run differs"


@BACKEND
@pytest.mark.parametrize("seed", [0, 2**32 + 7, 2**64 - 1])
@pytest.mark.parametrize("offset", [0, 2**32 - 5000, 2**64 - 3000])
def test_uniform_bit_identical(backend, seed, offset):
    _need(backend)
    n = 2**20 + 3
    actual = backends.module(backend).uniform(n, seed, offset, torch.device("cuda"))
    assert torch.equal(actual, reference.uniform(n, seed, offset, torch.device("cuda")))


PUBLIC = [c for c in CASES if c.shape in ((7, 13), (2, 3, 5, 7), (16, 3, 3, 3), (64, 33), (4, 16, 3, 3))]


@BACKEND
@DTYPES
@pytest.mark.parametrize("layout", ["contig", "sliced", "transposed"])
@pytest.mark.parametrize("case", PUBLIC, ids=str)
def test_public_ops_match_reference(backend, dtype, layout, case):
    """sparsekern.<op> on the backend, autograd included, (non-)contiguous CUDA inputs."""
    _need(backend)
    inp = _cuda(make_inputs(case, dtype, generator("gpu-public", case, dtype, layout), layout))

    def run(name, i):
        with sparsekern.use_backend(name):
            return public_outputs(case, i)

    actual, lowp = run(backend, inp), run("torch", inp)
    exact = run("torch", converted(inp, torch.float64))
    scales = run("torch", converted(inp, torch.float64, absolute=True))
    for i, (a, lo, ex, sc) in enumerate(zip(actual, lowp, exact, scales)):
        assert a.dtype == lo.dtype and a.shape == lo.shape
        assert_flash_close(a, lo, ex, dtype=dtype, scale=magnitude(sc), terms=terms_per_output(case, inp, ex),
                           what=f"{backend} public output {i}")
    check_exact_masks(case, inp, actual)


def test_auto_picks_cuda_when_compiled():
    if not backends.is_available("cuda"):
        pytest.skip("the compiled extension has no CUDA kernels")
    with sparsekern.use_backend("auto"):
        for dtype in LOW_PRECISION:
            assert backends.resolve_name(torch.device("cuda"), dtype) == "cuda"


def test_torch_compile_traces_triton_ops():
    """torch.ops.sparsekern_triton.* (triton_op) compile with fullgraph and match eager: the Triton
    kernels' outputs bit for bit; grad_s, which the op finishes with torch's sigmoid (inductor's
    tl.sigmoid when compiled, not ATen's), by the flash-attention rule against float64."""
    _need("triton")
    from sparsekern.backends.triton import ops as tops

    if not tops.HAS_TRITON_OP:
        pytest.skip("torch.library.triton_op needs torch >= 2.6")
    w = torch.randn(64, 96, device="cuda")
    la = torch.randn(64, device="cuda") * 1.5
    s = torch.full((64,), -1.0, device="cuda")

    def f(w, la, s):
        y = tops.gated_weight(w, la, 5, 7, *HC.values())
        return tops.soft_threshold_backward(y, w, s)

    eager = f(w, la, s)
    compiled = torch.compile(f, fullgraph=True)(w, la, s)
    assert torch.equal(compiled[0], eager[0]), "grad_w (a Triton kernel's output) differs when compiled"
    y = reference.gated_weight(w.double(), la.double(), 5, 7, *HC.values())
    exact = reference.soft_threshold_backward(y, w.double(), s.double())[1]
    assert_flash_close(compiled[1], eager[1], exact, dtype=torch.float32, scale=magnitude(exact), terms=w.shape[1],
                       what="grad_s compiled")


@pytest.mark.slow
@BACKEND
def test_indices_past_int32(backend):
    """2**31 + 2**15 bfloat16 weights (4 GiB): the last rows and the stream's tail are right."""
    _need(backend)
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with >= 40 GiB")
    mod = backends.module(backend)
    rows, inner = 2**16 + 1, 2**15
    w = torch.randn(rows, inner, device="cuda", dtype=torch.bfloat16)
    s = torch.randn(rows, device="cuda") * 0.5 - 1
    out = mod.soft_threshold(w, s)
    tail = slice(rows - 3, rows)
    torch.testing.assert_close(out[tail], reference.soft_threshold(w[tail].contiguous(), s[tail].contiguous()))
    grad_w, grad_s = mod.soft_threshold_backward(w, w, s)
    ref_w, ref_s = reference.soft_threshold_backward(w[tail].contiguous(), w[tail].contiguous(), s[tail].contiguous())
    torch.testing.assert_close(grad_w[tail], ref_w)
    torch.testing.assert_close(grad_s[tail], ref_s, rtol=1e-4, atol=1e-3)
    del w, out, grad_w
    n = 2**31 + 100
    u = mod.uniform(n, 99, 2**64 - 2**31, torch.device("cuda"))
    assert torch.equal(u[-1000:], reference.uniform(1000, 99, (2**64 - 2**31 + n - 1000) % 2**64, torch.device("cuda")))


@pytest.mark.parametrize("seed, offset", [(0, 0), (-(2**62), 2**32 - 2), (2**63 - 1, -5)])
def test_at_ops_read_the_noise_in_device_memory(seed, offset):
    """sparsekern_C::<op>_at on CUDA: the int-seeded kernels' bits, fwd and bwd, per-weight/row gates."""
    _need("cuda")
    ops, hc = torch.ops.sparsekern_C, (HC["beta"], HC["gamma"], HC["zeta"])
    noise = torch.tensor([seed, offset], dtype=torch.int64, device="cuda")
    w, la_full, la_rows = (torch.randn(*s, device="cuda") for s in ((64, 96), (64, 96), (64,)))
    x = torch.randn(8, 64, 5, device="cuda")
    for name, data in (("hard_concrete", (la_full,)), ("gated_weight", (w, la_full)), ("gated_weight", (w, la_rows)),
                       ("gated_activation", (x, la_rows))):
        got = getattr(ops, name + "_at")(*data, noise, *hc)
        assert torch.equal(got, getattr(ops, name)(*data, seed, offset, *hc)), name
        grad = torch.randn_like(got)
        got_b = getattr(ops, name + "_at_backward")(grad, *data, noise, *hc)
        want_b = getattr(ops, name + "_backward")(grad, *data, seed, offset, *hc)
        for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (got_b, want_b))):
            assert torch.equal(a, b), name


def test_cuda_graph_replays_read_the_live_noise_counter():
    """A captured gated_weight_at reads (seed, offset) at every replay: advancing the counter in
    place between replays gives each step's fresh gates, as eager calls do."""
    _need("cuda")
    ops, hc = torch.ops.sparsekern_C, (HC["beta"], HC["gamma"], HC["zeta"])
    w, la = torch.randn(64, 96, device="cuda"), torch.randn(64, 96, device="cuda")
    state = torch.tensor([7, 100], dtype=torch.int64, device="cuda")
    ops.gated_weight_at(w, la, state, *hc)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.gated_weight_at(w, la, state, *hc)
    for step in range(3):
        state[1] = 100 + step * w.numel()
        graph.replay()
        assert torch.equal(out, ops.gated_weight(w, la, 7, 100 + step * w.numel(), *hc)), step
