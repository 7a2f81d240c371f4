"""With ``set_inductor_gates("decompose")``, inductor compiles the gate ops' Philox stream and
hard-concrete math (``sparsekern.ops.gate_decomposition``) into its own kernels. Their values and
gradients must be the eager ``cpu`` kernels' bits; only sums over a group of elements (the
per-row ``gated_weight`` and the ``gated_activation`` log_alpha gradients) are added in another
order. A model compiled this way trains with one graph.

Each inductor compile of a Philox kernel costs seconds of gcc on these 2 cores: the quick tests
run the tensor ops eagerly for every case and compile one op; the full compiled sweep is slow.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code

import sparsekern
from sparsekern.ops import gate_decomposition, inductor
from sparsekern.pruning import sparsify
from helpers import generator

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not sparsekern.backends.extension.compiled_available(),
                                 reason="the decomposition reproduces the compiled cpu kernels")]

# counters wrap past 2**64 - 1 inside the first op (offset is the int64 with those bits)
NOISE = (0x1234_5678_9ABC_DEF1, -700)
PHILOX_CONSTANT = str(0xD2511F53 >> 1)  # the multiplier gate_decomposition uses: in every Philox kernel
HC = (2 / 3, -0.1, 1.1)


@pytest.fixture
def decompose():
    inductor.set_inductor_gates("decompose")
    yield
    inductor.set_inductor_gates(None)


def _inputs(dtype):
    gen = generator("gate-decomposition", str(dtype))

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).requires_grad_()
    # odd sizes: vector loops with tails
    # one weight per gated_weight call: a weight used twice gets its two bf16 gradients added in
    # float32 by inductor (no rounding in between), in bf16 by eager autograd
    return dict(la=leaf(37, 29, scale=3), w=leaf(13, 7), la_w=leaf(13, 7, scale=3), w_row=leaf(13, 7),
                la_row=leaf(13, scale=3),
                x=leaf(5, 11), la_x=leaf(11, scale=3), x4=leaf(3, 6, 5, 7), la_x4=leaf(6, scale=3))


# per-element gradients: exact; these sum over rows (la_row), the batch (la_x) or the batch and
# spatial positions (la_x4), in inductor's order instead of the kernels'
SUMMED = {"la_row", "la_x", "la_x4"}
# op -> the data tensors (keys of _inputs) of each case
CASES = {"hard_concrete": [("la",)], "gated_weight": [("w", "la_w"), ("w_row", "la_row")],
         "gated_activation": [("x", "la_x"), ("x4", "la_x4")]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("op", list(CASES))
def test_decomposition_equals_the_kernels_eagerly(op, dtype):
    """The tensor ops run eagerly: every case of every gate op, values and both gradients."""
    t = {k: v.detach() for k, v in _inputs(dtype).items()}
    noise = torch.tensor(NOISE, dtype=torch.int64)
    gen = generator("gate-decomposition-eager", op, str(dtype))
    for names in CASES[op]:
        data = tuple(t[n] for n in names)
        expected = getattr(torch.ops.sparsekern_C, f"{op}_at")(*data, noise, *HC)
        got = gate_decomposition.FORWARD[op](*data, noise, *HC)
        assert got.dtype == expected.dtype and torch.equal(got, expected), names
        grad = torch.randn(expected.shape, generator=gen).to(dtype)
        expected = getattr(torch.ops.sparsekern_C, f"{op}_at_backward")(grad, *data, noise, *HC)
        got = gate_decomposition.BACKWARD[op](grad, *data, noise, *HC)
        expected, got = (expected, got) if isinstance(got, tuple) else ((expected,), (got,))
        for name, a, b in zip(names, got, expected):
            assert a.dtype == b.dtype, name
            if name in SUMMED:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
            else:
                assert torch.equal(a, b), f"grad {name}: {(a != b).sum()} elements differ"


def _gate_calls(calls):
    """A function of (inputs, noise) making ``calls`` [(op, data names)], the noise counter advanced
    between calls as the layers do."""
    def run(t, noise):
        outs, offset = [], noise[1]
        for op, names in calls:
            outs.append(getattr(sparsekern, op)(*(t[n] for n in names), torch.stack([noise[0], offset])))
            offset = offset + 5000
        return outs
    return run


def _values_and_grads(fn, t, noise, upstream):
    outs = fn(t, noise)
    grads = torch.autograd.grad(outs, list(t.values()), upstream, allow_unused=True, materialize_grads=True)
    return [o.detach() for o in outs], dict(zip(t, grads))


def _check_compiled_equals_eager(calls, dtype):
    fn = _gate_calls(calls)
    t = {k: v for k, v in _inputs(dtype).items() if any(k in names for _, names in calls)}
    noise = torch.tensor(NOISE, dtype=torch.int64)
    gen = generator("gate-decomposition-upstream", str(dtype))
    upstream = [torch.randn(o.shape, generator=gen).to(dtype) for o in fn(t, noise)]
    expected, expected_grads = _values_and_grads(fn, t, noise, upstream)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        (got, got_grads), codes = run_and_get_code(lambda: _values_and_grads(compiled, t, noise, upstream))

    forward_code, backward_code = codes
    assert "sparsekern_C" not in forward_code + backward_code, "the kernels ran, not the decomposition"
    # the backward regenerates the noise from (seed, offset) instead of loading saved gates
    assert forward_code.count(PHILOX_CONSTANT) >= len(calls) and backward_code.count(PHILOX_CONSTANT) >= len(calls)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"output {i}: {(a != b).sum()} elements differ"
    for name, b in expected_grads.items():
        a = got_grads[name]
        assert a.dtype == b.dtype, name
        if name in SUMMED:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(a, b), f"grad {name}: {(a != b).sum()} elements differ"


def test_compiled_hard_concrete_equals_the_kernel(decompose):
    """One compile (quick): the generated C++ of the shared Philox and gate math, fwd and bwd."""
    _check_compiled_equals_eager([("hard_concrete", ("la",))], torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_gates_equal_the_kernels(dtype, decompose):
    """Every case of the three ops in one compiled graph (~1-2.5 min of compiling on 2 cores)."""
    _check_compiled_equals_eager([(op, names) for op, cases in CASES.items() for names in cases], dtype)


def test_eager_decomposition_is_the_uniform_stream_and_the_kernels():
    """Without a compile: the tensor-op stream equals the C++ one across the uint64 wrap, and
    exp/log equal the kernels' polynomials over their whole range (via the sampled gates)."""
    seed, offset = 0xFEDC_BA98_7654_3210, 2**64 - 1000
    noise = torch.tensor([seed - 2**64, offset - 2**64], dtype=torch.int64)
    assert torch.equal(gate_decomposition.uniform(4099, noise, torch.device("cpu")),
                       sparsekern.uniform(4099, seed, offset))
    la = torch.linspace(-60, 60, 20001)  # gates from exactly 0 through the stretch to exactly 1
    kernel = torch.ops.sparsekern_C.hard_concrete_at(la, noise, 2 / 3, -0.1, 1.1)
    assert torch.equal(gate_decomposition.hard_concrete(la, noise, 2 / 3, -0.1, 1.1), kernel)
    grad = torch.ops.sparsekern_C.hard_concrete_at_backward(torch.ones_like(la), la, noise, 2 / 3, -0.1, 1.1)
    assert torch.equal(gate_decomposition.hard_concrete_backward(torch.ones_like(la), la, noise, 2 / 3, -0.1, 1.1),
                       grad)


@pytest.mark.slow
def test_compiled_model_trains_in_one_graph(decompose):
    """An L0 model (per-weight gates, and activation gates) under inductor with the decomposition:
    one compile for all steps, eager's losses, and the noise counters advanced alike."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3))
    eager = sparsify(dense, "l0", granularity="weight").train()
    compiled_model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    gen = torch.Generator().manual_seed(1)
    for model, forward in ((eager, eager), (compiled_model, compiled)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(3):
            x, y = torch.randn(6, 12, generator=gen), torch.randint(0, 3, (6,), generator=gen)
            loss = nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        model.losses = torch.stack(losses)
        gen.manual_seed(1)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles for 3 training steps"
    torch.testing.assert_close(compiled_model.losses, eager.losses, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.state_dict().items(), compiled_model.state_dict().values()):
        if name.endswith("noise_state"):
            assert torch.equal(a, b), name


def test_a_new_lowering_recompiles():
    """Dynamo guards on the choice: a compiled function follows set_inductor_gates (no stale graph)."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda la, noise: sparsekern.hard_concrete(la, noise) * 2, backend=counter, fullgraph=True)
    la, noise = torch.randn(10), torch.tensor([1, 2])
    try:
        for lowering, compiles in (("kernel", 1), ("kernel", 1), ("decompose", 2), ("decompose", 2), ("kernel", 2)):
            inductor.set_inductor_gates(lowering)
            fn(la, noise)
            assert counter.frame_count == compiles, lowering
    finally:
        inductor.set_inductor_gates(None)


def test_bad_lowering_names_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="set_inductor_gates: lowering must be one of"):
        inductor.set_inductor_gates("fast")
    monkeypatch.setenv("SPARSEKERN_INDUCTOR_GATES", "fast")
    with pytest.raises(ValueError, match="SPARSEKERN_INDUCTOR_GATES must be one of"):
        inductor.inductor_gates()
