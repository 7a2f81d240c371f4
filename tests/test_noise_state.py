"""Noise (seed, offset) passed as an int64 tensor: the same numbers as the int API (docs/math.md §4)."""
from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.library import opcheck

import sparsekern
from sparsekern.backends import extension as _extension
from sparsekern.ops import noise as noise_ops
from sparsekern.backends import reference
from helpers import HC, cpu_backends, generator

SEED_OFFSETS = [(0, 0), (2**63 + 5, 2**64 - 3), (2**32 + 7, 2**32 - 2)]


def _noise(seed: int, offset: int) -> torch.Tensor:
    return torch.tensor([v - 2**64 if v >= 2**63 else v for v in (seed, offset)], dtype=torch.int64)


def _inputs(key):
    gen = generator("noise", *key)
    return {
        "hard_concrete": (torch.randn(6, 4, generator=gen).requires_grad_(),),
        "gated_weight": (torch.randn(6, 4, generator=gen).requires_grad_(),
                         torch.randn(6, generator=gen).requires_grad_()),
        "gated_activation": (torch.randn(3, 6, 2, generator=gen).requires_grad_(),
                             torch.randn(6, generator=gen).requires_grad_()),
    }


@pytest.mark.parametrize("backend", cpu_backends(light=True))
@pytest.mark.parametrize("seed,offset", SEED_OFFSETS)
def test_tensor_noise_equals_int_seed_offset(backend, seed, offset):
    for name, data in _inputs((seed, offset)).items():
        op = getattr(sparsekern, name)
        with sparsekern.use_backend(backend):
            by_int = op(*data, seed, offset, **HC)
            by_tensor = op(*data, _noise(seed, offset), **HC)
            grads_int = torch.autograd.grad((by_int * by_int).sum(), data)
            grads_tensor = torch.autograd.grad((by_tensor * by_tensor).sum(), data)
        assert torch.equal(by_int, by_tensor), name
        for a, b in zip(grads_int, grads_tensor):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("seed,offset", SEED_OFFSETS)
def test_reference_reads_seed_offset_from_tensors(seed, offset):
    """The CUDA-graph-capture path: 0-dim int64 device scalars instead of host ints."""
    la, x = torch.randn(5, 3), torch.randn(4, 3, 2)
    s, o = _noise(seed, offset)
    assert torch.equal(reference.uniform(40, s, o, la.device), reference.uniform(40, seed, offset, la.device))
    assert torch.equal(reference.hard_concrete(la, s, o, **HC), reference.hard_concrete(la, seed, offset, **HC))
    for a, b in zip(reference.gated_activation_backward(x, x, la[0], s, o, **HC),
                    reference.gated_activation_backward(x, x, la[0], seed, offset, **HC)):
        assert torch.equal(a, b)


TAKE_NOISE = {"custom-op": torch.ops.sparsekern.take_noise.default, "public": noise_ops.take_noise}
if _extension.compiled_available():
    TAKE_NOISE["compiled"] = torch.ops.sparsekern_C.take_noise.default


@pytest.mark.parametrize("impl", list(TAKE_NOISE))
def test_take_noise_advances_in_place_with_wraparound(impl):
    state = _noise(9, 2**64 - 2)
    version = state._version
    noise = TAKE_NOISE[impl](state, 5)
    assert noise.tolist() == _noise(9, 2**64 - 2).tolist()
    assert state.tolist() == [9, 3]  # (2**64 - 2 + 5) mod 2**64
    assert state._version > version  # eager layers' host copy of the counter sees the change


def test_take_noise_uses_the_compiled_op_where_built():
    if not _extension.compiled_available():
        pytest.skip("no compiled extension")
    traced = make_fx(noise_ops.take_noise)(_noise(1, 2), 3)
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [torch.ops.sparsekern_C.take_noise.default]


@pytest.mark.parametrize("impl", [name for name in TAKE_NOISE if name == "compiled"])
def test_take_noise_bad_state_is_a_clear_error(impl):
    with pytest.raises(RuntimeError, match=r"take_noise: state must be an int64 tensor \[seed, offset\]"):
        TAKE_NOISE[impl](torch.zeros(2), 1)
    with pytest.raises(RuntimeError, match=r"take_noise: state must be an int64 tensor"):
        TAKE_NOISE[impl](torch.zeros(3, dtype=torch.int64), 1)
    with pytest.raises(RuntimeError, match="take_noise: numel must be non-negative"):
        TAKE_NOISE[impl](_noise(1, 2), -1)


def test_opcheck_tensor_noise_ops():
    noise = _noise(2**63 + 5, 11)
    for name, data in _inputs(("opcheck",)).items():
        opcheck(noise_ops.OPS[name], (*data, noise, *HC.values()))
    for take_noise in TAKE_NOISE.values():
        if isinstance(take_noise, torch._ops.OpOverload):
            opcheck(take_noise, (_noise(3, 4), 7))


def test_bad_noise_tensors_are_clear_errors():
    la = torch.randn(4)
    with pytest.raises(TypeError, match="hard_concrete: seed must be an int, or an int64 noise tensor of shape"):
        sparsekern.hard_concrete(la, torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(TypeError, match="gated_weight: seed must be an int, or an int64 noise tensor"):
        sparsekern.gated_weight(la, la, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="offset must be left out"):
        sparsekern.gated_activation(la.reshape(1, 4), la, _noise(1, 2), 5)


def test_noise_tensor_on_another_device_is_a_clear_error():
    la = torch.randn(4)
    message = r"hard_concrete: the noise tensor \(seed\) is on meta but log_alpha is on cpu"
    with pytest.raises(ValueError, match=message):
        sparsekern.hard_concrete(la, _noise(1, 2).to("meta"))


needs_compiled = pytest.mark.skipif("cpu" not in sparsekern.available_backends(), reason="needs the compiled kernels")
_I64 = [(0, 0), (-(2**62), 2**32 - 2), (2**63 - 1, -5)]  # int64 bits of 64-bit seeds/offsets (the schemas' ints)


def _at_cases(dtype):
    """(name, data tensors) of every `_at` op: per-weight, per-row and per-tensor gates, activations."""
    gen = generator("at-ops", str(dtype))
    r = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    return [("hard_concrete", (r(5, 7),)), ("gated_weight", (r(5, 7), r(5, 7))), ("gated_weight", (r(5, 3, 2), r(5))),
            ("gated_weight", (r(5, 7), r(1))), ("gated_activation", (r(3, 4, 2, 2), r(4))),
            ("gated_activation", (r(3, 4), r(4)))]


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("seed,offset", _I64)
def test_at_ops_equal_the_int_seeded_kernels(dtype, seed, offset):
    """sparsekern_C::<op>_at reads (seed, offset) from the tensor: the int-seeded kernel's bits, fwd and bwd."""
    ops = torch.ops.sparsekern_C
    noise = torch.tensor([seed, offset], dtype=torch.int64)
    for name, data in _at_cases(dtype):
        got = getattr(ops, name + "_at")(*data, noise, *HC.values())
        want = getattr(ops, name)(*data, seed, offset, *HC.values())
        assert got.dtype == want.dtype and torch.equal(got, want), name
        grad = torch.randn(got.shape, generator=generator("at-grad", name)).to(dtype)
        got_b = getattr(ops, name + "_at_backward")(grad, *data, noise, *HC.values())
        want_b = getattr(ops, name + "_backward")(grad, *data, seed, offset, *HC.values())
        for a, b in zip(*(out if isinstance(out, tuple) else (out,) for out in (got_b, want_b))):
            assert a.dtype == b.dtype and torch.equal(a, b), name


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_at_ops_opcheck_and_autograd(dtype):
    """Schema, fakes and the C++ autograd, whose backward gives the noise tensor no gradient."""
    ops, noise = torch.ops.sparsekern_C, _noise(2**63 + 5, 11)
    for name, data in _at_cases(dtype):
        data = tuple(t.requires_grad_() for t in data)
        op = getattr(ops, name + "_at")
        opcheck(op, (*data, noise, *HC.values()))
        if dtype == torch.float64:
            assert torch.autograd.gradcheck(lambda *t: op(*t, noise, *HC.values()), data, eps=1e-6, atol=1e-7)
        out = op(*data, noise, *HC.values())
        want = getattr(ops, name)(*data, *(v - 2**64 if v >= 2**63 else v for v in (2**63 + 5, 11)), *HC.values())
        grads = torch.autograd.grad(out.sum(), data)
        want_grads = torch.autograd.grad(want.sum(), data)
        assert all(torch.equal(a, b) for a, b in zip(grads, want_grads)), name


@needs_compiled
def test_at_ops_check_the_noise_tensor():
    la = torch.randn(4)
    with pytest.raises(RuntimeError, match=r"hard_concrete_at: noise must be an int64 tensor \[seed, offset\]"):
        torch.ops.sparsekern_C.hard_concrete_at(la, torch.tensor([1, 2], dtype=torch.int32), *HC.values())
    with pytest.raises(RuntimeError, match=r"gated_weight_at_backward: noise must be an int64 tensor"):
        torch.ops.sparsekern_C.gated_weight_at_backward(la, la, la, torch.tensor([1, 2, 3]), *HC.values())


def test_eager_layers_keep_the_stream_without_reading_the_buffer_back():
    """Eager training keeps a host copy of (seed, offset); whatever else writes the buffer
    (a state_dict load, a direct write, a move to new tensors, a compiled step) is picked up."""
    import copy
    import pickle

    from sparsekern import nn as snn

    torch.manual_seed(0)
    layer = snn.L0Linear(5, 3, granularity="weight").train()
    x = torch.randn(2, 5)
    seed, n = layer.noise_seed, 15

    def offsets(steps):
        got = []
        for _ in range(steps):
            got.append(layer.noise_offset)
            layer(x)
        return got

    assert offsets(3) == [0, n, 2 * n]
    saved = copy.deepcopy(layer.state_dict())
    offsets(2)
    layer.load_state_dict(saved)
    assert offsets(2) == [3 * n, 4 * n]
    with torch.no_grad():
        layer.noise_state[1] = 7
    assert offsets(2) == [7, 7 + n]
    clone = copy.deepcopy(layer)
    assert pickle.loads(pickle.dumps(clone)).noise_offset == 7 + 2 * n
    # a move (new tensors), here with another offset in the new buffer
    layer._apply(lambda t: torch.tensor([seed, 100]) if t.dtype == torch.int64 else t.clone())
    assert offsets(2) == [100, 100 + n] and clone.noise_offset == 7 + 2 * n
    # the sampled noise is the one the stream says: the op's output at that offset
    with torch.no_grad():
        out = layer(x)
        want = torch.nn.functional.linear(
            x, sparsekern.gated_weight(layer.weight, layer.log_alpha, seed, 100 + 2 * n), layer.bias)
    torch.testing.assert_close(out, want)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    compiled(x)
    assert layer.noise_offset == 100 + 4 * n
    assert offsets(1) == [100 + 4 * n] and layer.noise_offset == 100 + 5 * n
