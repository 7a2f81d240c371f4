"""The eager fast path (sparsekern.ops.fast_path, csrc/autograd.cpp): public ops on the compiled backend
call torch.ops.sparsekern_C, whose autograd is registered in C++, instead of the custom ops.

It must give the custom-op path's values and gradients bit for bit (same kernels, same saved
inputs), keep its error messages, noise and backend semantics, and leave torch.compile, fake
tensors, make_fx and functorch on the custom ops. (test_ops compares every public op on the
`cpu` backend, i.e. this path, with the float64 reference.)
"""
from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch._subclasses.fake_tensor import FakeTensorMode

import sparsekern
from helpers import CASES, HC, dtype_id, generator, make_inputs, public_outputs
from sparsekern.backends import extension as _extension
from sparsekern.ops import fast_path as direct

pytestmark = pytest.mark.skipif(not _extension.compiled_available(), reason="sparsekern._C is not built")
FAST_NODE = "CppFunction"  # the grad_fn type of torch::autograd::Function nodes


@contextlib.contextmanager
def _fast_path(enabled: bool):
    previous, direct.ENABLED = direct.ENABLED, enabled
    try:
        yield
    finally:
        direct.ENABLED = previous


def _outputs(case, inp, fast: bool):
    with _fast_path(fast), sparsekern.use_backend("cpu"):
        return public_outputs(case, inp)


PARAMS = [
    pytest.param(case, dtype, layout, id=f"{case}-{dtype_id(dtype)}-{layout}")
    for case in CASES
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    for layout in ("contig", "transposed")
    if layout == "contig" or (dtype == torch.float32 and len(case.shape) >= 2)
]


@pytest.mark.parametrize("case, dtype, layout", PARAMS)
def test_same_values_and_gradients_as_the_custom_op(case, dtype, layout):
    inp = make_inputs(case, dtype, generator("fast", case, dtype, layout), layout)
    fast, custom = _outputs(case, inp, True), _outputs(case, inp, False)
    for name, a, b in zip(("out", "grad_main", "grad_param"), fast, custom):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs between the fast path and the custom op"


def _leaves(dtype=torch.float32, rows=6):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(rows, 5, generator=g, dtype=dtype).requires_grad_()
    s = (torch.randn(rows, generator=g, dtype=dtype) - 1).requires_grad_()
    la = (torch.randn(rows, 5, generator=g, dtype=dtype) * 1.5).requires_grad_()
    return w, s, la


def test_mixed_dtypes_match_the_custom_op(monkeypatch):
    """bf16 weight with an fp32 parameter: each gradient in its input's dtype, as before."""
    w, s, la = _leaves()
    wb = w.detach().bfloat16().requires_grad_()
    la_rows = la.detach()[:, 0].clone().requires_grad_()
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(direct, "ENABLED", enabled)
        y1, y2 = sparsekern.soft_threshold(wb, s), sparsekern.gated_weight(wb, la_rows, 2**63 + 1, 7)
        results.append((y1, y2, *torch.autograd.grad((y1.float() + y2.float()).sum(), [wb, s, la_rows])))
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert [g.dtype for g in results[0][2:]] == [torch.bfloat16, torch.float32, torch.float32]


def test_fast_path_only_in_eager_on_the_compiled_backend():
    w, s, _ = _leaves()
    assert type(sparsekern.soft_threshold(w, s).grad_fn).__name__ == FAST_NODE
    with sparsekern.use_backend("torch"):
        assert type(sparsekern.soft_threshold(w, s).grad_fn).__name__ != FAST_NODE
    # Fake tensors and make_fx see the custom ops (their fake kernels and graphs are what tracing uses).
    with FakeTensorMode():
        wf, sf = torch.randn(6, 5, requires_grad=True), torch.zeros(1, requires_grad=True)
        assert type(sparsekern.soft_threshold(wf, sf).grad_fn).__name__ != FAST_NODE
    gm = make_fx(lambda a, b: sparsekern.soft_threshold(a, b))(w.detach(), s.detach())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.sparsekern.soft_threshold.default]


def test_environment_selection_applies_to_the_next_call(monkeypatch):
    # The backend resolution caches by the raw SPARSEKERN_BACKEND value: a change must show at once.
    w, s, _ = _leaves()
    sparsekern.soft_threshold(w, s)
    monkeypatch.setenv("SPARSEKERN_BACKEND", "torch")
    assert type(sparsekern.soft_threshold(w, s).grad_fn).__name__ != FAST_NODE
    monkeypatch.setenv("SPARSEKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SPARSEKERN_BACKEND: unknown backend 'bogus'"):
        sparsekern.soft_threshold(w, s)
    monkeypatch.delenv("SPARSEKERN_BACKEND")
    assert type(sparsekern.soft_threshold(w, s).grad_fn).__name__ == FAST_NODE


def test_no_grad_and_inference_mode():
    w, s, la = _leaves()
    with torch.no_grad():
        assert sparsekern.gated_weight(w, la, 1, 2).grad_fn is None
    with torch.inference_mode():
        y = sparsekern.soft_threshold(w, s)
    assert y.is_inference() and not y.requires_grad
    assert torch.equal(y, sparsekern.soft_threshold(w, s).detach())


def test_noise_matches_the_int_and_tensor_seeded_ops():
    """64-bit seeds/offsets (as int64 bits in C++) give the custom op's and the noise-tensor op's gates."""
    w, _, la = _leaves()
    seed, offset = 2**64 - 3, 2**63 + 11
    fast = sparsekern.gated_weight(w, la, seed, offset)
    noise = torch.tensor([seed - 2**64, offset - 2**64], dtype=torch.int64)
    tensor_seeded = sparsekern.gated_weight(w, la, noise)
    with _fast_path(False):
        custom = sparsekern.gated_weight(w, la, seed, offset)
    assert torch.equal(fast, custom) and torch.equal(fast, tensor_seeded)
    for a, b in zip(torch.autograd.grad(fast.sum(), [w, la]), torch.autograd.grad(custom.sum(), [w, la])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("enabled", [True, False], ids=["fast", "custom-op"])
@pytest.mark.parametrize("call, message", [
    (lambda w, s, la: sparsekern.soft_threshold(w, s[:4]), "soft_threshold: s must have 1 element or weight.shape[0]"),
    (lambda w, s, la: sparsekern.soft_threshold(w.int(), s), "soft_threshold: weight must be float32"),
    (lambda w, s, la: sparsekern.gated_weight(w, la[:, :2], 1, 0), "gated_weight: log_alpha must have 1 element"),
    (lambda w, s, la: sparsekern.gated_weight(w, la, -1, 0), "gated_weight: seed must be in [0, 2**64)"),
    (lambda w, s, la: sparsekern.hard_concrete(la, 1, 0, beta=0.0), "hard_concrete: beta must be > 0"),
    (lambda w, s, la: sparsekern.gated_activation(w, s, 1, 0), "gated_activation: log_alpha must have x.shape[1]"),
    (lambda w, s, la: sparsekern.l0_norm(la, gamma=0.5), "l0_norm: need gamma < 0"),
], ids=["rows", "dtype", "gate-shape", "seed", "beta", "channels", "stretch"])
def test_errors_name_the_argument(monkeypatch, enabled, call, message):
    monkeypatch.setattr(direct, "ENABLED", enabled)
    with pytest.raises((ValueError, TypeError)) as info:
        call(*_leaves())
    assert message in str(info.value)


def test_backward_on_the_forward_backend_and_other_threads():
    """The backward kernel is the compiled one whatever backend block or thread runs it."""
    w, s, la = _leaves()
    want = torch.autograd.grad(sparsekern.gated_weight(w, la, 5, 6).sum(), [w, la])
    y1, y2 = sparsekern.gated_weight(w, la, 5, 6), sparsekern.gated_weight(w, la, 5, 6)
    with sparsekern.use_backend("torch"):
        got1 = torch.autograd.grad(y1.sum(), [w, la])
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("g", torch.autograd.grad(y2.sum(), [w, la])))
    worker.start()
    worker.join()
    forward_in_thread = threading.Thread(
        target=lambda: box.setdefault("y", sparsekern.gated_weight(w, la, 5, 6)))
    forward_in_thread.start()
    forward_in_thread.join()
    got3 = torch.autograd.grad(box["y"].sum(), [w, la])
    for got in (got1, box["g"], got3):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_saved_inputs_modified_in_place_are_an_error():
    w, s, _ = _leaves()
    y = sparsekern.soft_threshold(w, s)
    with torch.no_grad():
        w.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_double_backward_is_an_error():
    w, s, _ = _leaves()
    gw, gs = torch.autograd.grad(sparsekern.soft_threshold(w, s).sum(), [w, s], create_graph=True)
    with pytest.raises(RuntimeError, match="soft_threshold_backward is not implemented"):
        gs.sum().backward()


# ---------------------------------------------------------------- the compiled ops themselves
def _compiled_op_samples(dtype):
    w, s, la = (t.detach().to(dtype).requires_grad_() for t in _leaves())
    x = torch.randn(2, 6, 3, 3, dtype=dtype, requires_grad=True)
    seed, offset = -(2**62), 2**32 - 2  # int64 bits of 64-bit seeds, as the schema takes them
    hc = (HC["beta"], HC["gamma"], HC["zeta"])
    ops = torch.ops.sparsekern_C
    return [
        (ops.soft_threshold, (w, s)),
        (ops.hard_concrete, (la, seed, offset, *hc)),
        (ops.hard_concrete_eval, (la, HC["gamma"], HC["zeta"])),
        (ops.l0_norm, (la, *hc)),
        (ops.gated_weight, (w, la, seed, offset, *hc)),
        (ops.gated_weight, (w, s, seed, offset, *hc)),
        (ops.gated_activation, (x, s, seed, offset, *hc)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("index", range(7))
def test_opcheck_with_gradients(dtype, index):
    """Schema, fakes, the C++ autograd registration and AOT dispatch (forward and backward)."""
    op, args = _compiled_op_samples(dtype)[index]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("index", range(7))
def test_gradcheck_compiled_ops_float64(index):
    op, args = _compiled_op_samples(torch.float64)[index]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    scalars = args[len(tensors):]
    assert torch.autograd.gradcheck(lambda *t: op(*t, *scalars), tensors, eps=1e-6, atol=1e-7)


def test_compile_fullgraph_uses_the_custom_ops():
    """Under torch.compile the public ops trace to the sparsekern:: custom ops, no graph break,
    and the compiled function gives the eager fast path's values and gradients."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def f(w, s, la):
        return sparsekern.soft_threshold(w, s) + sparsekern.gated_weight(w, la, 9, 4)

    torch._dynamo.reset()
    w, s, la = _leaves()
    compiled = torch.compile(f, backend=backend, fullgraph=True)
    y = compiled(w, s, la)
    got = torch.autograd.grad(y.sum(), [w, s, la])
    assert torch.ops.sparsekern.soft_threshold.default in seen and torch.ops.sparsekern.gated_weight.default in seen
    assert not any(str(t).startswith("sparsekern_C") for t in seen)
    want_y = f(w, s, la)
    want = torch.autograd.grad(want_y.sum(), [w, s, la])
    assert torch.equal(y, want_y) and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("numel", [0, 1, 1000, 40_000])
@pytest.mark.parametrize("seed, offset", [(0, 0), (2**64 - 1, 2**63 + 5), (2**32 + 7, 2**64 - 10)])
def test_uniform_matches_the_custom_op(seed, offset, numel):
    # On CPU the fast path is the module's direct binding (sparsekern._C.uniform_cpu), not the op.
    fast = sparsekern.uniform(numel, seed, offset)
    with _fast_path(False):
        custom = sparsekern.uniform(numel, seed, offset)
    assert fast.shape == (numel,) and fast.dtype == torch.float32 and torch.equal(fast, custom)
    with sparsekern.use_backend("torch"):
        assert torch.equal(fast, sparsekern.uniform(numel, seed, offset))
