"""Every backend against the reference: kernel functions and public ops, forward and all gradients.

Outputs are compared to the reference run in float64 on the same inputs, with
the flash-attention rule (see helpers.assert_flash_close); where the math is
exact (masks, clamped gates) results must match bit for bit.
"""
from __future__ import annotations

import math

import pytest
import torch

import sparsekern
from helpers import (
    CASES,
    FLOAT_DTYPES,
    HC,
    assert_flash_close,
    check_exact_masks,
    compiled_cpu_backends,
    converted,
    cpu_backends,
    dtype_id,
    generator,
    kernel_outputs,
    magnitude,
    make_inputs,
    public_outputs,
    skip_unsupported,
    terms_per_output,
)
from sparsekern import backends
from sparsekern.backends import reference

DTYPES = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
CASE = pytest.mark.parametrize("case", CASES, ids=str)
NAMES = ("out", "grad_main", "grad_param")


def _compare(case, inp, dtype, actual, lowp, exact, scales, where):
    names = NAMES if "main" in inp else ("out", "grad_param")
    for name, a, lo, ex, sc in zip(names, actual, lowp, exact, scales):
        assert a.dtype == lo.dtype, f"{where} {name}: dtype {a.dtype}, reference gives {lo.dtype}"
        assert_flash_close(a, lo, ex, dtype=dtype, scale=magnitude(sc), terms=terms_per_output(case, inp, ex),
                           what=f"{where} {name}")


@pytest.mark.parametrize("backend", cpu_backends())
@DTYPES
@CASE
def test_kernels_match_reference(backend, dtype, case):
    """The backend module's fwd/bwd functions (the kernel contract) on contiguous inputs."""
    skip_unsupported(backend, dtype)
    inp = make_inputs(case, dtype, generator("kernel", case, dtype))
    mod = backends.module(backend)
    actual = kernel_outputs(mod, case, inp)
    lowp = kernel_outputs(reference, case, inp)
    exact = kernel_outputs(reference, case, converted(inp, torch.float64))
    scales = kernel_outputs(reference, case, converted(inp, torch.float64, absolute=True))
    _compare(case, inp, dtype, actual, lowp, exact, scales, f"{backend} kernels")
    check_exact_masks(case, inp, actual)


def _public(backend, case, inp):
    with sparsekern.use_backend(backend):
        return public_outputs(case, inp)


# Non-contiguous layouts in float32 and bfloat16; transposes need 2 dimensions.
PUBLIC_PARAMS = [
    pytest.param(case, dtype, layout, id=f"{case}-{dtype_id(dtype)}-{layout}")
    for case in CASES
    for dtype in FLOAT_DTYPES
    for layout in ("contig", "sliced", "transposed")
    if (layout == "contig" or dtype in (torch.float32, torch.bfloat16))
    and (layout != "transposed" or len(case.shape) >= 2)
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case, dtype, layout", PUBLIC_PARAMS)
def test_public_ops_match_reference(backend, dtype, case, layout):
    """Through sparsekern.<op> and autograd, on contiguous and non-contiguous inputs."""
    skip_unsupported(backend, dtype)
    inp = make_inputs(case, dtype, generator("public", case, dtype, layout), layout)
    actual = _public(backend, case, inp)
    lowp = _public("torch", case, inp)
    exact = _public("torch", case, converted(inp, torch.float64))
    scales = _public("torch", case, converted(inp, torch.float64, absolute=True))
    _compare(case, inp, dtype, actual, lowp, exact, scales, f"{backend} public")
    for name, a, leaf in zip(("grad_main", "grad_param"), actual[1:], [inp[k] for k in ("main", "param") if k in inp]):
        assert a.dtype == leaf.dtype and a.shape == leaf.shape, f"{name}: gradient dtype/shape differs from the input"
    check_exact_masks(case, inp, actual)


@pytest.mark.parametrize("backend", cpu_backends(light=True))
@pytest.mark.parametrize("case", [c for c in CASES if c.shape in ((7, 13), (2, 3, 5, 7))], ids=str)
def test_public_ops_light(backend, case):
    """Every backend (interpreted Triton included) on one small shape per op, float32."""
    inp = make_inputs(case, torch.float32, generator("light", case))
    actual = _public(backend, case, inp)
    lowp = _public("torch", case, inp)
    exact = _public("torch", case, converted(inp, torch.float64))
    scales = _public("torch", case, converted(inp, torch.float64, absolute=True))
    _compare(case, inp, torch.float32, actual, lowp, exact, scales, f"{backend} light")


# ---------------------------------------------------------------- the reference against the docs/math.md formulas
def _spec_soft_threshold(w, s):
    t = torch.sigmoid(s.reshape((-1,) + (1,) * (w.dim() - 1)) if s.numel() > 1 else s.reshape(()))
    return torch.sign(w) * torch.relu(w.abs() - t)


def _spec_hard_concrete(la, seed, offset):
    u = sparsekern.uniform(la.numel(), seed, offset).double().reshape(la.shape).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la) / HC["beta"])
    return torch.clamp(s * (HC["zeta"] - HC["gamma"]) + HC["gamma"], 0, 1)


def test_reference_matches_spec_formulas():
    """The torch backend's forward and autograd gradients equal docs/math.md written out with autograd (float64)."""
    gen = generator("spec")
    w = torch.randn(6, 5, dtype=torch.float64, generator=gen).requires_grad_()
    s = (torch.randn(6, dtype=torch.float64, generator=gen) - 1).requires_grad_()
    la = (torch.randn(6, 5, dtype=torch.float64, generator=gen) * 1.5).requires_grad_()
    la_rows = (torch.randn(6, dtype=torch.float64, generator=gen) * 1.5).requires_grad_()
    x = torch.randn(3, 6, 2, 2, dtype=torch.float64, generator=gen).requires_grad_()
    seed, offset = 2**63 + 5, 2**32 - 3
    stretch = HC["zeta"] - HC["gamma"]
    pairs = [
        (lambda: sparsekern.soft_threshold(w, s), lambda: _spec_soft_threshold(w, s)),
        (lambda: sparsekern.hard_concrete(la, seed, offset), lambda: _spec_hard_concrete(la, seed, offset)),
        (lambda: sparsekern.hard_concrete_eval(la),
         lambda: torch.clamp(torch.sigmoid(la) * stretch + HC["gamma"], 0, 1)),
        (lambda: sparsekern.l0_norm(la),
         lambda: torch.sigmoid(la - HC["beta"] * math.log(-HC["gamma"] / HC["zeta"])).sum()),
        (lambda: sparsekern.gated_weight(w, la, seed, offset), lambda: w * _spec_hard_concrete(la, seed, offset)),
        (lambda: sparsekern.gated_weight(w, la_rows, seed, offset),
         lambda: w * _spec_hard_concrete(la_rows, seed, offset)[:, None]),
        (lambda: sparsekern.gated_activation(x, la_rows, seed, offset),
         lambda: x * _spec_hard_concrete(la_rows.expand(3, 6), seed, offset)[:, :, None, None]),
    ]
    leaves = [w, s, la, la_rows, x]
    with sparsekern.use_backend("torch"):
        for i, (ours, spec) in enumerate(pairs):
            a, b = ours(), spec()
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"forward of case {i}")
            g = torch.randn(a.shape, dtype=torch.float64, generator=gen)
            ga = torch.autograd.grad(a, leaves, g, allow_unused=True, materialize_grads=True)
            gb = torch.autograd.grad(b, leaves, g, allow_unused=True, materialize_grads=True)
            for leaf_grad_a, leaf_grad_b in zip(ga, gb):
                torch.testing.assert_close(leaf_grad_a, leaf_grad_b, rtol=1e-10, atol=1e-12,
                                           msg=f"gradient of case {i}")


# ---------------------------------------------------------------- gradcheck and opcheck
GRADCHECK_FNS = {
    "soft_threshold-tensor": (lambda w, p, sd: sparsekern.soft_threshold(w, p), (5, 4), (1,)),
    "soft_threshold-row": (lambda w, p, sd: sparsekern.soft_threshold(w, p), (5, 2, 2), (5,)),
    "hard_concrete": (lambda w, p, sd: sparsekern.hard_concrete(p, *sd), None, (4, 5)),
    "hard_concrete_eval": (lambda w, p, sd: sparsekern.hard_concrete_eval(p), None, (4, 5)),
    "l0_norm": (lambda w, p, sd: sparsekern.l0_norm(p), None, (4, 5)),
    "gated_weight-full": (lambda w, p, sd: sparsekern.gated_weight(w, p, *sd), (4, 5), (4, 5)),
    "gated_weight-row": (lambda w, p, sd: sparsekern.gated_weight(w, p, *sd), (4, 3, 2), (4,)),
    "gated_activation-2d": (lambda w, p, sd: sparsekern.gated_activation(w, p, *sd), (3, 4), (4,)),
    "gated_activation-4d": (lambda w, p, sd: sparsekern.gated_activation(w, p, *sd), (2, 3, 2, 2), (3,)),
}


@pytest.mark.parametrize("backend", compiled_cpu_backends())
@pytest.mark.parametrize("name", list(GRADCHECK_FNS))
def test_gradcheck_float64(backend, name):
    fn, main_shape, param_shape = GRADCHECK_FNS[name]
    gen = generator("gradcheck", name)
    seed_offset = (2**63 + 5, 2**32 - 2)
    param = torch.randn(param_shape, dtype=torch.float64, generator=gen)
    param = (param - 1 if name.startswith("soft") else param * 1.5).requires_grad_()
    inputs = [param]
    if main_shape is not None:
        inputs.insert(0, torch.randn(main_shape, dtype=torch.float64, generator=gen).requires_grad_())
    call = (lambda w, p: fn(w, p, seed_offset)) if main_shape is not None else (lambda p: fn(None, p, seed_offset))
    with sparsekern.use_backend(backend):
        assert torch.autograd.gradcheck(call, inputs, eps=1e-6, atol=1e-7, check_batched_grad=False)


def _opcheck_samples(dtype, backend):
    gen = generator("opcheck", dtype)
    w = torch.randn(6, 5, generator=gen).to(dtype)
    s = torch.randn(6, generator=gen).to(dtype)
    la = torch.randn(6, 5, generator=gen).to(dtype)
    x = torch.randn(2, 6, 3, 3, generator=gen).to(dtype)
    seed, offset = -(2**62), 2**32 - 2  # the op schema's int64 view of a 64-bit seed
    hc = (HC["beta"], HC["gamma"], HC["zeta"])
    ops = torch.ops.sparsekern
    return [
        (ops.soft_threshold, (w, s)),
        (ops.soft_threshold_backward, (w, w, s, backend)),
        (ops.hard_concrete, (la, seed, offset, *hc)),
        (ops.hard_concrete_backward, (la, la, seed, offset, *hc, backend)),
        (ops.hard_concrete_eval, (la, HC["gamma"], HC["zeta"])),
        (ops.hard_concrete_eval_backward, (la, la, HC["gamma"], HC["zeta"], backend)),
        (ops.l0_norm, (la, *hc)),
        (ops.l0_norm_backward, (la.sum(), la, *hc, backend)),
        (ops.gated_weight, (w, s, seed, offset, *hc)),
        (ops.gated_weight_backward, (w, w, la, seed, offset, *hc, backend)),
        (ops.gated_activation, (x, s, seed, offset, *hc)),
        (ops.gated_activation_backward, (x, x, s, seed, offset, *hc, backend)),
        (ops.uniform, (17, seed, offset, torch.device("cpu"))),
    ]


@pytest.mark.parametrize("backend", compiled_cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("index", range(13))
def test_opcheck(backend, dtype, index):
    """Schema, fake kernel (incl. output dtypes), autograd registration and AOT dispatch of each custom op."""
    op, args = _opcheck_samples(dtype, backend)[index]
    if dtype != torch.float32 and op is torch.ops.sparsekern.uniform:
        pytest.skip("uniform takes no tensor")
    with sparsekern.use_backend(backend):
        torch.library.opcheck(op, args)


def test_backward_runs_on_the_forward_backend(monkeypatch):
    """Backward uses the forward's backend even outside its use_backend block or on another thread."""
    import threading

    from sparsekern.backends import reference

    calls = []
    original = reference.soft_threshold_backward
    monkeypatch.setattr(reference, "soft_threshold_backward", lambda *a: calls.append(1) or original(*a))
    w = torch.randn(5, 3, requires_grad=True)
    s = torch.zeros(1, requires_grad=True)
    with sparsekern.use_backend("torch"):
        y1, y2 = sparsekern.soft_threshold(w, s), sparsekern.soft_threshold(w, s)
    y1.sum().backward()
    worker = threading.Thread(target=lambda: y2.sum().backward())
    worker.start()
    worker.join()
    assert calls == [1, 1]
