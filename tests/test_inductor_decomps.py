"""Under inductor, soft_threshold, hard_concrete_eval and l0_norm lower to their formulas
(inductor fuses them), whichever backend is selected; the result is eager's within fp32 rounding.

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
