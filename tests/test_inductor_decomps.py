"""Under inductor, soft_threshold, hard_concrete_eval and l0_norm lower to their formulas
(inductor fuses them), whichever backend is selected; the result is eager's within fp32 rounding.
The gate-sampling ops call the compiled kernels directly on a compiled backend (eager's bits).

Each case is one real inductor compile (slow on 2 cores): a function using all three ops,
forward and backward, checked against eager and against the generated code.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import sparsekern
from helpers import assert_flash_close, generator, magnitude

pytestmark = pytest.mark.usefixtures("one_thread")
DETERMINISTIC = ("soft_threshold", "hard_concrete_eval", "l0_norm")


def _function(t):
    st = sparsekern.soft_threshold(t["w"], t["s"])
    gates = sparsekern.hard_concrete_eval(t["la"])
    return (st * 3).square().sum() + (gates * t["w"]).sum() + sparsekern.l0_norm(t["la"]) * 0.5


def _inputs(dtype, per_row: bool, as_dtype=None):
    """Fresh leaves of ``dtype``'s values (in ``as_dtype``, e.g. float64 for the exact run)."""
    gen = generator("inductor-decomps", str(dtype), per_row)
    values = dict(w=torch.randn(12, 7, generator=gen), s=torch.randn(12 if per_row else 1, generator=gen) - 1,
                  la=torch.randn(12, 7, generator=gen) * 2)
    return {k: v.to(dtype).to(as_dtype or dtype).requires_grad_() for k, v in values.items()}


def _value_and_grads(fn, inputs):
    loss = fn(inputs)
    return [loss.detach(), *torch.autograd.grad(loss, list(inputs.values()))]


def _compiled_run(inputs):
    """Loss and grads of the inductor-compiled function, and the code inductor generated."""
    torch._dynamo.reset()
    compiled = torch.compile(_function, fullgraph=True)
    # No cache: a graph cached by an earlier compile would keep that compile's lowering.
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        result, codes = run_and_get_code(lambda: _value_and_grads(compiled, inputs))
    return result, "\n".join(codes)


CASES = {"fp32": (torch.float32, False, "auto"), "bf16-rows": (torch.bfloat16, True, "auto"),
         "fp32-rows-cpu": (torch.float32, True, "cpu")}


@pytest.mark.parametrize("case", list(CASES))
def test_inductor_lowers_the_formulas(case):
    dtype, per_row, backend = CASES[case]
    if backend not in sparsekern.available_backends() + ["auto"]:
        pytest.skip(f"backend {backend!r} is not available here")
    with sparsekern.use_backend(backend):
        eager = _value_and_grads(_function, _inputs(dtype, per_row))
        got, code = _compiled_run(_inputs(dtype, per_row))
    exact = _value_and_grads(_function, _inputs(dtype, per_row, torch.float64))
    for name in DETERMINISTIC:
        assert f"sparsekern.{name}" not in code, f"{name} was not lowered"
    assert "cpp_fused" in code  # inductor's own kernels computed them
    # The rule of every backend: no further from float64 than 2x eager in the same dtype. (Inductor
    # keeps bf16 intermediates of the surrounding ops in fp32, so it is not eager's bits.)
    for what, a, lowp, ex in zip(("loss", "grad w", "grad s", "grad log_alpha"), got, eager, exact):
        assert a.dtype == lowp.dtype, what
        assert_flash_close(a, lowp, ex, dtype=dtype, scale=magnitude(ex), terms=84, what=what)


def _gates(t):
    """Every gate-sampling op with a noise tensor, as compiled models call them (sparsekern.ops.noise)."""
    z = sparsekern.hard_concrete(t["la_z"], t["noise"])
    gw = sparsekern.gated_weight(t["w"], t["la"], t["noise"])
    ga = sparsekern.gated_activation(t["x"], t["la_c"], t["noise"])
    return (z * t["c1"]).sum() + (gw * t["c2"]).sum() + (ga * t["c3"]).sum()


def _gate_inputs(dtype, device):
    gen = generator("inductor-gates", str(dtype))
    # every leaf used once: a sum of grads may round once in inductor (fp32) and twice in eager (bf16)
    leaves = dict(w=torch.randn(12, 7, generator=gen), la=torch.randn(12, 7, generator=gen) * 2,
                  la_z=torch.randn(12, 7, generator=gen) * 2,
                  x=torch.randn(3, 5, 4, 4, generator=gen), la_c=torch.randn(5, generator=gen) * 2)
    t = {k: v.to(device, dtype).requires_grad_() for k, v in leaves.items()}
    # fixed cotangents: the grads that reach the ops are these values exactly, in any fusion
    cotangents = dict(c1=torch.randn(12, 7, generator=gen), c2=torch.randn(12, 7, generator=gen),
                      c3=torch.randn(3, 5, 4, 4, generator=gen))
    t.update({k: v.to(device, dtype) for k, v in cotangents.items()})
    t["noise"] = torch.tensor([-(2**62) - 9, 40], device=device)  # the int64 bits of a uint64 seed > 2**63
    return t


_NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("backend, dtype", [("cpu", torch.float32), ("cpu", torch.bfloat16), ("torch", torch.float32),
                                            pytest.param("cuda", torch.float32, marks=_NEEDS_GPU),
                                            pytest.param("cuda", torch.bfloat16, marks=_NEEDS_GPU)])
def test_inductor_calls_the_compiled_gate_kernels(backend, dtype):
    if backend not in sparsekern.available_backends():
        pytest.skip(f"backend {backend!r} is not available here")
    t = _gate_inputs(dtype, "cuda" if backend == "cuda" else "cpu")
    leaves = [t[k] for k in ("w", "la", "la_z", "x", "la_c")]
    with sparsekern.use_backend(backend):
        want = torch.autograd.grad(_gates(t), leaves)
        torch._dynamo.reset()
        compiled = torch.compile(_gates, fullgraph=True)
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            got, codes = run_and_get_code(lambda: torch.autograd.grad(compiled(t), leaves))
    code = "\n".join(codes)
    for name in ("hard_concrete", "gated_weight", "gated_activation"):
        for op in (name + "_at", name + "_at_backward"):
            direct = f"torch.ops.sparsekern_C.{op}.default("
            any_backend = f"torch.ops.sparsekern.{op}_any.default("
            assert (direct in code, any_backend in code) == ((backend != "torch"), (backend == "torch")), op
    for a, b in zip(got, want):  # the same kernels on the same inputs and cotangents: the same bits
        assert a.dtype == b.dtype and torch.equal(a, b), (a.float() - b.float()).abs().max()


_FRESH = """
import sys, torch, sparsekern
assert "torch._inductor.decomposition" not in sys.modules
w, s = torch.randn(8, 4, requires_grad=True), torch.tensor([-1.0], requires_grad=True)
f = lambda w, s: sparsekern.soft_threshold(w, s).square().sum()
torch.compile(f, backend="aot_eager", fullgraph=True)(w, s).backward()  # a fake kernel registers the lowering
assert "torch._inductor.decomposition" in sys.modules
torch._dynamo.reset()
from torch._inductor.utils import run_and_get_code
with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
    loss, codes = run_and_get_code(lambda: torch.compile(f, fullgraph=True)(w, s))
assert "sparsekern.soft_threshold" not in "".join(codes)
torch.testing.assert_close(loss, f(w, s))
"""


def test_lowering_registers_lazily_in_a_fresh_process():
    """``import sparsekern`` does not import inductor; the first traced op registers the lowering."""
    done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
