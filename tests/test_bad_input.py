"""Bad and extreme input: clear errors naming the argument, NaN propagation, no Inf/NaN at extremes, empty tensors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sparsekern
from helpers import cpu_backends

SEED = 2**63 + 5


def _w(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


# One call per op that takes (tensor, param); `bad` replaces one argument.
def _calls(w=None, s=None, la=None, la_rows=None, x=None, la_x=None):
    w = _w(4, 3) if w is None else w
    s = torch.zeros(1) if s is None else s
    la = torch.zeros(4, 3) if la is None else la
    la_rows = torch.zeros(4) if la_rows is None else la_rows
    x = _w(2, 5, 3) if x is None else x
    la_x = torch.zeros(5) if la_x is None else la_x
    return {
        "soft_threshold": lambda: sparsekern.soft_threshold(w, s),
        "hard_concrete": lambda: sparsekern.hard_concrete(la, SEED),
        "hard_concrete_eval": lambda: sparsekern.hard_concrete_eval(la),
        "l0_norm": lambda: sparsekern.l0_norm(la),
        "gated_weight": lambda: sparsekern.gated_weight(w, la_rows, SEED),
        "gated_activation": lambda: sparsekern.gated_activation(x, la_x, SEED),
    }


BAD_DTYPES = [torch.int32, torch.int64, torch.bool, torch.uint8]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
@pytest.mark.parametrize(
    "op, arg, build",
    [
        ("soft_threshold", "weight", lambda t: _calls(w=t(4, 3))),
        ("soft_threshold", "s", lambda t: _calls(s=t(1))),
        ("hard_concrete", "log_alpha", lambda t: _calls(la=t(4, 3))),
        ("hard_concrete_eval", "log_alpha", lambda t: _calls(la=t(4, 3))),
        ("l0_norm", "log_alpha", lambda t: _calls(la=t(4, 3))),
        ("gated_weight", "weight", lambda t: _calls(w=t(4, 3))),
        ("gated_weight", "log_alpha", lambda t: _calls(la_rows=t(4))),
        ("gated_activation", "x", lambda t: _calls(x=t(2, 5, 3))),
        ("gated_activation", "log_alpha", lambda t: _calls(la_x=t(5))),
    ],
)
def test_non_float_dtype_is_a_type_error(op, arg, build, dtype):
    calls = build(lambda *shape: torch.ones(*shape).to(dtype))
    with pytest.raises(TypeError, match=rf"{op}: {arg} must be"):
        calls[op]()


@pytest.mark.parametrize(
    "op, arg, build",
    [
        ("soft_threshold", "s", lambda: _calls(s=torch.zeros(3))),
        ("soft_threshold", "s", lambda: _calls(s=torch.zeros(4, 3))),
        ("gated_weight", "log_alpha", lambda: _calls(la_rows=torch.zeros(5))),
        ("gated_weight", "log_alpha", lambda: _calls(la_rows=torch.zeros(3, 4))),
        ("gated_activation", "log_alpha", lambda: _calls(la_x=torch.zeros(2))),
        ("gated_activation", "x", lambda: _calls(x=torch.zeros(5))),
    ],
)
def test_wrong_parameter_size_is_a_value_error(op, arg, build):
    with pytest.raises(ValueError, match=rf"{op}: {arg} must"):
        build()[op]()


@pytest.mark.parametrize(
    "op, arg, build",
    [
        ("soft_threshold", "s", lambda: _calls(s=torch.zeros(1, device="meta"))),
        ("gated_weight", "log_alpha", lambda: _calls(la_rows=torch.zeros(4, device="meta"))),
        ("gated_activation", "log_alpha", lambda: _calls(la_x=torch.zeros(5, device="meta"))),
    ],
)
def test_mixed_devices_are_a_value_error(op, arg, build):
    with pytest.raises(ValueError, match=rf"{op}: {arg} is on meta"):
        build()[op]()


def test_meta_tensors_give_shapes_without_data():
    w = torch.empty(4, 3, device="meta")
    out = sparsekern.soft_threshold(w, torch.empty(4, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3)


@pytest.mark.parametrize("arg", ["seed", "offset"])
@pytest.mark.parametrize(
    "value, error",
    [(1.0, TypeError), ("3", TypeError), (True, TypeError), (None, TypeError), (torch.tensor(3), TypeError),
     (-1, ValueError), (2**64, ValueError)],
    ids=["float", "str", "bool", "None", "tensor", "negative", "2**64"],
)
@pytest.mark.parametrize("op", ["hard_concrete", "gated_weight", "gated_activation", "uniform"])
def test_bad_seed_or_offset(op, arg, value, error):
    args = {"seed": SEED, "offset": 0, arg: value}
    call = {
        "hard_concrete": lambda: sparsekern.hard_concrete(torch.zeros(3), args["seed"], args["offset"]),
        "gated_weight": lambda: sparsekern.gated_weight(_w(3, 2), torch.zeros(3), args["seed"], args["offset"]),
        "gated_activation": lambda: sparsekern.gated_activation(_w(2, 3), torch.zeros(3), args["seed"],
                                                                args["offset"]),
        "uniform": lambda: sparsekern.uniform(4, args["seed"], args["offset"]),
    }[op]
    with pytest.raises(error, match=rf"{op}: {arg} must"):
        call()


@pytest.mark.parametrize("numel", [-1, 2.0, True])
def test_bad_uniform_numel(numel):
    with pytest.raises((TypeError, ValueError), match="uniform: numel must"):
        sparsekern.uniform(numel, 1)


@pytest.mark.parametrize(
    "kwargs, arg",
    [(dict(beta=0.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(gamma=0.1), "gamma"),
     (dict(zeta=0.9), "zeta"), (dict(zeta=float("inf")), "zeta")],
)
def test_bad_hard_concrete_constants(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        sparsekern.hard_concrete(torch.zeros(3), 1, **kwargs)


# ---------------------------------------------------------------- NaN, extremes, empty
@pytest.mark.parametrize("backend", cpu_backends(light=True))
def test_nan_in_nan_out(backend):
    w = _w(4, 3)
    w[1, 2] = float("nan")
    la = torch.randn(4, 3)
    la[2, 0] = float("nan")
    with sparsekern.use_backend(backend):
        assert torch.isnan(sparsekern.soft_threshold(w, torch.zeros(1))[1, 2])
        row = sparsekern.soft_threshold(_w(4, 3), torch.tensor([0.0, float("nan"), 0.0, 0.0]))
        assert torch.isnan(row[1]).all() and not torch.isnan(row[[0, 2, 3]]).any()
        assert torch.isnan(sparsekern.hard_concrete(la, SEED)[2, 0])
        assert torch.isnan(sparsekern.hard_concrete_eval(la)[2, 0])
        assert torch.isnan(sparsekern.l0_norm(la))
        assert torch.isnan(sparsekern.gated_weight(_w(4, 3), la, SEED)[2, 0])
        out = sparsekern.gated_activation(_w(2, 3, 5), la[2], SEED)
        assert torch.isnan(out[:, 0]).all() and not torch.isnan(out[:, 1:]).any()


def _weight_ops(w, s, la):
    """Every op on a weight, its threshold and its gates (outputs in a fixed order)."""
    return [
        sparsekern.soft_threshold(w, s),
        sparsekern.hard_concrete(la, SEED),
        sparsekern.hard_concrete_eval(la),
        sparsekern.l0_norm(la),
        sparsekern.gated_weight(w, la, SEED),
    ]


def _all_finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("extreme", [1e4, -1e4])
def test_extreme_parameters_stay_finite(backend, dtype, extreme):
    w = _w(8, 5, dtype=dtype).requires_grad_()
    s = torch.full((8,), extreme, dtype=dtype).requires_grad_()
    la = torch.full((8, 5), extreme, dtype=dtype).requires_grad_()
    x = _w(3, 8, 2, dtype=dtype).requires_grad_()
    with sparsekern.use_backend(backend):
        outs = _weight_ops(w, s, la) + [sparsekern.gated_activation(x, la[:, 0], SEED)]
        grads = torch.autograd.grad(sum(o.float().sum() for o in outs), [w, s, la, x])
    assert _all_finite(*outs, *grads)
    gate = 1.0 if extreme > 0 else 0.0
    assert (outs[1] == gate).all() and (outs[2] == gate).all()
    wd = w.detach().float()
    threshold = 1.0 if extreme > 0 else 0.0  # sigmoid(+-1e4) is exactly 1 or 0 in float32
    assert torch.equal(outs[0], (torch.sign(wd) * torch.relu(wd.abs() - threshold)).to(dtype))


EMPTY_SHAPES = [(0,), (0, 5), (0, 3, 3, 3)]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
def test_empty_tensors_forward_and_backward(backend, shape):
    w = torch.empty(shape).requires_grad_()
    s = torch.zeros(1).requires_grad_()
    la = torch.empty(shape).requires_grad_()
    with sparsekern.use_backend(backend):
        outs = _weight_ops(w, s, la)
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [w, s, la])
    assert [tuple(o.shape) for o in outs] == [shape, shape, shape, (), shape]
    assert float(outs[3]) == 0.0
    assert grads[0].shape == shape and grads[2].shape == shape and float(grads[1]) == 0.0


@pytest.mark.parametrize("backend", cpu_backends())
def test_empty_per_row_parameters(backend):
    """Zero rows with per-row s / log_alpha, and a batch of zero examples."""
    w = torch.empty(0, 5).requires_grad_()
    s = torch.empty(0).requires_grad_()
    x = torch.empty(0, 4, 3, 3).requires_grad_()
    la = torch.zeros(4).requires_grad_()
    with sparsekern.use_backend(backend):
        a = sparsekern.soft_threshold(w, s)
        b = sparsekern.gated_weight(w, s, SEED)
        c = sparsekern.gated_activation(x, la, SEED)
        grads = torch.autograd.grad(a.sum() + b.sum() + c.sum(), [w, s, x, la])
    assert a.shape == b.shape == (0, 5) and c.shape == (0, 4, 3, 3)
    assert grads[1].shape == (0,) and torch.equal(grads[3], torch.zeros(4))


# ---------------------------------------------------------------- backend selection errors
def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        with sparsekern.use_backend("nope"):
            pass


def test_unavailable_backend():
    missing = [n for n in ("cuda", "triton", "cpu") if n not in sparsekern.available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ValueError, match=rf"backend '{missing[0]}' is not available"):
        with sparsekern.use_backend(missing[0]):
            pass


def test_backend_that_cannot_run_the_tensor():
    """cuda on a CPU tensor (when the compiled cuda backend exists) or triton without a GPU/interpreter."""
    from sparsekern.backends import registry

    with pytest.raises(ValueError, match="cannot run this op"):
        registry._state.name = "cuda"  # bypass use_backend's availability check: the op must still refuse
        try:
            sparsekern.soft_threshold(torch.ones(2), torch.zeros(1))
        finally:
            registry._state.name = None


def _run_with_env(value: str, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSEKERN_BACKEND": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


CALL = ("import torch, sparsekern; print(sparsekern.current_backend()); "
        "sparsekern.soft_threshold(torch.ones(3), torch.zeros(1))")


def test_env_var_selects_backend():
    done = _run_with_env("torch", CALL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "torch"


@pytest.mark.parametrize("value, message", [("bogus", "SPARSEKERN_BACKEND: unknown backend 'bogus'"),
                                            ("cuda", "backend 'cuda'")])
def test_env_var_errors(value, message):
    done = _run_with_env(value, CALL)
    assert done.returncode != 0
    assert "ValueError" in done.stderr and message in done.stderr, done.stderr[-2000:]
