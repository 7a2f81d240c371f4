"""torch.compile(fullgraph=True) of functions using each op, forward and backward, equals eager.

The per-op checks use the cheap `aot_eager` compiler (the same graph capture,
fake kernels and autograd tracing as inductor, no C++ code generation); one
test runs the real inductor on a function that uses every op.
"""
from __future__ import annotations

import pytest
import torch

import sparsekern
from helpers import HC, compiled_cpu_backends, generator

SEED, OFFSET = 2**63 + 5, 2**32 - 2


def _inputs():
    gen = generator("compile")
    return dict(
        w=torch.randn(6, 4, generator=gen).requires_grad_(),
        s=(torch.randn(6, generator=gen) - 1).requires_grad_(),
        la=(torch.randn(6, 4, generator=gen) * 1.5).requires_grad_(),
        la_rows=(torch.randn(6, generator=gen) * 1.5).requires_grad_(),
        x=torch.randn(3, 6, 2, 2, generator=gen).requires_grad_(),
    )


# Each function mixes the op with ordinary torch ops so the graph has more than one node.
FUNCTIONS = {
    "soft_threshold": lambda t: (sparsekern.soft_threshold(t["w"], t["s"]) * 2).square().sum(),
    "hard_concrete": lambda t: (sparsekern.hard_concrete(t["la"], SEED, OFFSET, **HC) * t["w"]).sum(),
    "hard_concrete_eval": lambda t: (sparsekern.hard_concrete_eval(t["la"]) * t["w"]).sum(),
    "l0_norm": lambda t: sparsekern.l0_norm(t["la"], **HC) * 0.5 + t["w"].sum(),
    "gated_weight": lambda t: (sparsekern.gated_weight(t["w"], t["la_rows"], SEED, OFFSET, **HC) ** 2).sum(),
    "gated_activation": lambda t: sparsekern.gated_activation(t["x"], t["la_rows"], SEED, OFFSET, **HC).relu().sum(),
    "uniform": lambda t: (sparsekern.uniform(24, SEED, OFFSET).reshape(6, 4) * t["w"]).sum(),
}


def _value_and_grads(fn, inputs):
    loss = fn(inputs)
    leaves = list(inputs.values())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [loss.detach(), *grads]


def _check_same(compiled, eager, exact: bool):
    for a, b in zip(compiled, eager):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", compiled_cpu_backends())
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_compile_each_op_fullgraph(backend, name):
    torch._dynamo.reset()
    fn = FUNCTIONS[name]
    with sparsekern.use_backend(backend):
        eager = _value_and_grads(fn, _inputs())
        compiled = _value_and_grads(torch.compile(fn, fullgraph=True, backend="aot_eager"), _inputs())
    _check_same(compiled, eager, exact=True)


def test_inductor_all_ops():
    """One real inductor compile (slow on 2 cores: kept to a single graph) of every op, fwd + bwd."""
    torch._dynamo.reset()

    def everything(t):
        return sum(f(t) for f in FUNCTIONS.values())

    eager = _value_and_grads(everything, _inputs())
    compiled = _value_and_grads(torch.compile(everything, fullgraph=True), _inputs())
    _check_same(compiled, eager, exact=False)
