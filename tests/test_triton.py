"""The Triton backend against the reference: every kernel, forward and all gradients.

Runs on CUDA tensors when there is a GPU, else on CPU tensors in the Triton
interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before triton is
imported); tiny sizes so the interpreted run stays fast. Outputs are held to the
flash-attention rule of helpers.assert_flash_close; gate noise must equal the
reference bit for bit.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sparsekern
from helpers import (
    CASES,
    LOW_PRECISION,
    SEEDS,
    Case,
    HC,
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

pytest.importorskip("triton")
if not backends.is_available("triton"):
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1 (set before triton is imported)", allow_module_level=True)

from sparsekern.backends.triton import backend as tb  # noqa: E402

DEVICE = "cpu" if backends.triton_interpreted() else "cuda"
DTYPES = pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
# Shapes with several column tiles / reduction blocks, so the two-stage reductions are exercised.
MULTI_TILE = [
    Case("soft_threshold", (3, 2500), "row"),
    Case("soft_threshold", (5001,), "tensor"),
    Case("l0_norm", (9001,)),
    Case("hard_concrete", (2100,)),
    Case("gated_weight", (3, 2100), "row"),
    Case("gated_weight", (2, 1500), "full"),
    Case("gated_activation", (3, 2, 1100)),
]


def _on_device(inp: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in inp.items()}


def _compare(case, inp, dtype, actual, where, reference_fn):
    """actual vs the reference run in dtype (lowp) and in float64 (exact), flash rule."""
    lowp = reference_fn(inp)
    exact = reference_fn(converted(inp, torch.float64))
    scales = reference_fn(converted(inp, torch.float64, absolute=True))
    names = ("out", "grad_main", "grad_param") if "main" in inp else ("out", "grad_param")
    for name, a, lo, ex, sc in zip(names, actual, lowp, exact, scales):
        assert a.dtype == lo.dtype and a.shape == lo.shape, f"{where} {name}: {a.dtype}{tuple(a.shape)}"
        assert_flash_close(a.cpu(), lo, ex, dtype=dtype, scale=magnitude(sc), terms=terms_per_output(case, inp, ex),
                           what=f"{where} {name}")


@DTYPES
@pytest.mark.parametrize("case", CASES + MULTI_TILE, ids=str)
def test_kernels_match_reference(dtype, case):
    if case in MULTI_TILE and dtype != torch.float32:
        pytest.skip("multi-tile shapes run in float32 only (interpreter time)")
    inp = make_inputs(case, dtype, generator("triton-kernel", case, dtype))
    actual = [t.cpu() for t in kernel_outputs(tb, case, _on_device(inp))]
    _compare(case, inp, dtype, actual, "triton kernels", lambda i: kernel_outputs(reference, case, i))
    check_exact_masks(case, inp, actual)


PUBLIC = [c for c in CASES if c.shape in ((7, 13), (2, 3, 5, 7), (16, 3, 3, 3), (1,))]


@pytest.mark.parametrize("layout", ["contig", "transposed"])
@DTYPES
@pytest.mark.parametrize("case", PUBLIC, ids=str)
def test_public_ops_match_reference(case, dtype, layout):
    """sparsekern.<op> with use_backend("triton"), through autograd, (non-)contiguous inputs."""
    if layout == "transposed" and len(case.shape) < 2:
        pytest.skip("1-D tensors have no transpose")
    if layout == "transposed" and dtype == torch.float16:
        pytest.skip("non-contiguous inputs are covered in float32 and bfloat16")
    inp = make_inputs(case, dtype, generator("triton-public", case, dtype, layout), layout)
    with sparsekern.use_backend("triton"):
        actual = [t.cpu() for t in public_outputs(case, _on_device(inp))]

    def torch_public(i):
        with sparsekern.use_backend("torch"):
            return public_outputs(case, i)

    _compare(case, inp, dtype, actual, "triton public", torch_public)
    check_exact_masks(case, inp, actual)


# ---------------------------------------------------------------- the random stream
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", [0, 5, 2**32 - 700, 2**63 - 3, 2**64 - 900])
def test_uniform_bit_identical(seed, offset):
    """Counters crossing 2**32, 2**63 and wrapping past 2**64 (odd length: a partial block)."""
    actual = tb.uniform(1501, seed, offset, torch.device(DEVICE)).cpu()
    assert torch.equal(actual, reference.uniform(1501, seed, offset, torch.device("cpu")))


def test_public_uniform_uses_triton():
    with sparsekern.use_backend("triton"):
        actual = sparsekern.uniform(777, 2**64 - 1, 2**64 - 7, device=DEVICE).cpu()
    assert torch.equal(actual, reference.uniform(777, 2**64 - 1, 2**64 - 7, torch.device("cpu")))


@DTYPES
def test_same_gates_in_every_op(dtype):
    """For one (seed, offset), hard_concrete, gated_weight (per weight / per row) and
    gated_activation use the same noise index layout, so their gates are bit-identical."""
    gen = generator("triton-gates", dtype)
    batch, channels, seed, offset = 3, 37, 2**63 + 5, 2**32 - 40
    la = (torch.randn(channels, generator=gen) * 1.5).to(dtype).to(DEVICE)
    la_bc = la.reshape(1, -1).expand(batch, -1).contiguous()
    args = (seed, offset, HC["beta"], HC["gamma"], HC["zeta"])
    z = tb.hard_concrete(la_bc, *args)
    ones = torch.ones(batch, channels, dtype=dtype, device=DEVICE)
    assert torch.equal(tb.gated_weight(ones, la_bc, *args), z)
    assert torch.equal(tb.gated_activation(ones, la, *args), z)
    assert torch.equal(tb.gated_activation(ones.reshape(batch, channels, 1, 1).expand(-1, -1, 2, 3).contiguous(),
                                           la, *args), z.reshape(batch, channels, 1, 1).expand(-1, -1, 2, 3))
    z_rows = tb.hard_concrete(la, *args)
    assert torch.equal(tb.gated_weight(torch.ones(channels, 5, dtype=dtype, device=DEVICE), la, *args),
                       z_rows[:, None].expand(-1, 5))
    assert torch.equal(tb.hard_concrete(la_bc, *args), z), "a repeat run drew other gates"
    assert not torch.equal(tb.hard_concrete(la_bc, seed, offset + 1, *args[2:]), z), "offset does not move the noise"


@pytest.mark.parametrize("case", MULTI_TILE, ids=str)
def test_repeat_runs_bit_identical(case):
    """Forward and backward (with their two-stage reductions) repeat bit for bit."""
    inp = _on_device(make_inputs(case, torch.float32, generator("triton-repeat", case)))
    first, second = kernel_outputs(tb, case, inp), kernel_outputs(tb, case, inp)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_tensors():
    args = (7, 0, HC["beta"], HC["gamma"], HC["zeta"])
    w, s = torch.empty(0, 3, device=DEVICE), torch.zeros(1, device=DEVICE)
    assert tb.soft_threshold(w, s).shape == (0, 3)
    assert tb.soft_threshold_backward(w, w, s)[1].cpu().eq(0).all()
    assert tb.hard_concrete(torch.empty(0, device=DEVICE), *args).numel() == 0
    assert float(tb.l0_norm(torch.empty(0, device=DEVICE), *args[2:])) == 0.0
    x = torch.empty(2, 3, 0, device=DEVICE)
    grad_x, grad_la = tb.gated_activation_backward(x, x, torch.zeros(3, device=DEVICE), *args)
    assert grad_x.shape == x.shape and grad_la.cpu().eq(0).all()


def test_backend_implements_the_kernel_contract():
    """Every kernel function of sparsekern.backends.reference, with the same parameters."""
    import inspect

    for name in CONTRACT:
        ours, spec = inspect.signature(getattr(tb, name)), inspect.signature(getattr(reference, name))
        assert list(ours.parameters) == list(spec.parameters), name


def _opcheck_samples():
    gen = generator("triton-opcheck")
    w, la = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    s, x = torch.randn(6, generator=gen), torch.randn(2, 6, 3, 3, generator=gen)
    w, la, s, x = (t.to(DEVICE) for t in (w, la, s, x))
    hc, seed, offset = tuple(HC.values()), -(2**62), 2**32 - 2
    return {
        "soft_threshold": (w, s),
        "soft_threshold_backward": (w, w, s),
        "hard_concrete": (la, seed, offset, *hc),
        "hard_concrete_backward": (la, la, seed, offset, *hc),
        "hard_concrete_eval": (la, HC["gamma"], HC["zeta"]),
        "hard_concrete_eval_backward": (la, la, HC["gamma"], HC["zeta"]),
        "l0_norm": (la, *hc),
        "l0_norm_backward": (la.sum(), la, *hc),
        "gated_weight": (w, s, seed, offset, *hc),
        "gated_weight_backward": (w, w, la, seed, offset, *hc),
        "gated_activation": (x, s, seed, offset, *hc),
        "gated_activation_backward": (x, x, s, seed, offset, *hc),
        "uniform_": (torch.empty(37, device=DEVICE), seed, offset),
    }


CONTRACT = [n for n in _opcheck_samples() if n != "uniform_"] + ["uniform"]


@pytest.mark.parametrize("name", list(_opcheck_samples()))
def test_opcheck(name):
    """torch.ops.sparsekern_triton.<name>: schema, fake kernel, autograd registration, AOT tracing."""
    torch.library.opcheck(getattr(torch.ops.sparsekern_triton, name), _opcheck_samples()[name])


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The real Triton compiler (not the interpreter) builds every kernel for sm_90, no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "sparsekern.backends.triton.aot_check", "--dtypes", "bf16"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled to cubin for sm_90" in done.stdout
