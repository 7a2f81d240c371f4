"""Variants of the gate-sampling ops that take the noise (seed, offset) as a tensor.

``sparsekern::<op>_at(..., Tensor noise, ...)`` computes exactly what ``<op>(..., seed,
offset, ...)`` does (docs/math.md §4) for ``noise = tensor([seed, offset], dtype=int64)`` (the int64
with the bits of each uint64). A module keeps its noise in such a buffer and advances it
in place, so under ``torch.compile`` the counter is graph data, not a Python constant that
dynamo guards on: training steps reuse one graph instead of recompiling every step.
The kernels read the tensor themselves: ``sparsekern_C::<op>_at`` on the compiled backends and
``sparsekern_triton::<op>_at`` on Triton (in device memory on CUDA: no host sync, and CUDA graphs
replay the live counter). The ``torch`` backend takes the two words as 0-dim device tensors on
CUDA (no sync) and as host ints on the CPU.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern import backends
from sparsekern.backends import extension
from sparsekern.ops import fast_path, inductor
from sparsekern.ops.checks import unsigned
from sparsekern.ops.dispatch import GATE_DATA_ARGS, backend_name, param_grad_dtype

_HC = "float beta, float gamma, float zeta"


def _seed_offset(noise: Tensor) -> tuple:
    """(seed, offset) for the ``torch`` backend's int-seeded kernels. On CUDA, the two 0-dim int64
    device tensors, which the reference reads on the device (docs/math.md §4): no host sync, and a
    captured CUDA graph reads the live counter at every replay. On the CPU, host ints (no sync)."""
    if noise.device.type != "cpu":
        return noise[0], noise[1]
    seed, offset = noise.tolist()
    return unsigned(seed), unsigned(offset)


def _kernel(backend: str, name: str, backward: bool, noise: Tensor):
    """The backend's kernel and the noise arguments it takes. The compiled backends and Triton read
    the noise tensor themselves (``<op>_at``); the reference takes ``_seed_offset``."""
    tail = "_backward" if backward else ""
    if backend in fast_path.BACKENDS:
        return getattr(torch.ops.sparsekern_C, f"{name}_at{tail}"), (noise.contiguous(),)
    if backend == "triton":
        return getattr(backends.module(backend), f"{name}_at{tail}"), (noise.contiguous(),)
    return getattr(backends.module(backend), name + tail), _seed_offset(noise)


def _grad_fakes(data: tuple[Tensor, ...]):
    *others, log_alpha = data
    grads = [t.new_empty(t.shape) for t in others]
    grads.append(log_alpha.new_empty(log_alpha.shape, dtype=param_grad_dtype(log_alpha)))
    return grads[0] if len(grads) == 1 else tuple(grads)


def _define(name: str, arg_names: tuple[str, ...]):
    """The ``<name>_at`` op and its backward op, with fake kernels and autograd."""
    n = len(arg_names)
    tensors = ", ".join(f"Tensor {a}" for a in arg_names)
    grads_out = "Tensor" if n == 1 else "(" + ", ".join(["Tensor"] * n) + ")"

    def forward(*args):
        data, (noise, beta, gamma, zeta) = args[:n], args[n:]
        data = tuple(t.contiguous() for t in data)
        kernel, noise_args = _kernel(backend_name(*data), name, False, noise)
        return kernel(*data, *noise_args, beta, gamma, zeta)

    def backward(grad, *args):
        data, (noise, beta, gamma, zeta, backend) = args[:n], args[n:]
        data, grad = tuple(t.contiguous() for t in data), grad.contiguous()
        kernel, noise_args = _kernel(backend, name, True, noise)
        out = kernel(grad, *data, *noise_args, beta, gamma, zeta)
        return out if n == 1 else tuple(out)

    fwd_schema = f"({tensors}, Tensor noise, {_HC}) -> Tensor"
    bwd_schema = f"(Tensor grad, {tensors}, Tensor noise, {_HC}, str backend) -> {grads_out}"

    def fwd_fake(*args):
        inductor.register()
        return args[0].new_empty(args[0].shape)

    def define(op_name: str, fn, schema: str, fake):
        op = torch.library.custom_op(f"sparsekern::{op_name}", fn, mutates_args=(), schema=schema)
        op.register_fake(fake)
        return op

    fwd = define(f"{name}_at", forward, fwd_schema, fwd_fake)
    bwd = define(f"{name}_at_backward", backward, bwd_schema, lambda grad, *args: _grad_fakes(args[:n]))
    # The same two ops again, which inductor leaves in its graphs: sparsekern.ops.inductor sends
    # the ones above to sparsekern_C::<op>_at when the backend is a compiled one, and here otherwise.
    define(f"{name}_at_any", forward, fwd_schema, fwd_fake)
    define(f"{name}_at_backward_any", backward, bwd_schema, lambda grad, *args: _grad_fakes(args[:n]))

    def setup_context(ctx, inputs, output):
        data, noise = inputs[:n], inputs[n]
        ctx.save_for_backward(*data, noise)
        ctx.hc = tuple(inputs[n + 1:])
        # The backward runs on the forward's backend (autograd may run it in another thread).
        ctx.backend = backend_name(*data)

    def grad_fn(ctx, grad):
        *data, noise = ctx.saved_tensors
        out = bwd(grad, *data, noise, *ctx.hc, ctx.backend)
        grads = [out] if n == 1 else list(out)
        grads[-1] = grads[-1].to(data[-1].dtype)  # log_alpha's grad in its own dtype
        return (*grads, None, None, None, None)

    fwd.register_autograd(grad_fn, setup_context=setup_context)
    return fwd


OPS = {name: _define(name, args) for name, args in GATE_DATA_ARGS.items()}


@torch.library.custom_op("sparsekern::take_noise", mutates_args=("state",))
def _take_noise(state: Tensor, numel: int) -> Tensor:
    noise = state.clone()
    state[1:].add_(numel)
    return noise


@_take_noise.register_fake
def _(state, numel):
    return torch.empty_like(state)


# Devices whose compiled extension has the C++ take_noise (no Python dispatch in compiled graphs).
_COMPILED_TAKE_NOISE = {"cpu": extension.compiled_has("CPU"), "cuda": extension.compiled_has("CUDA")}


def take_noise(state: Tensor, numel: int) -> Tensor:
    """A copy of ``state = [seed, offset]``, then ``offset += numel`` in place (int64 wrap-around).

    One opaque op, not ``clone`` + ``add_``: inductor's partitioner may recompute a plain clone of
    the buffer in the backward, after the in-place advance, and so read the next step's offset.
    ``sparsekern_C::take_noise`` where the extension is built for the state's device (a C++ op,
    ~3 us), else the ``sparsekern::take_noise`` custom op (~20 us of Python dispatch).
    """
    if _COMPILED_TAKE_NOISE.get(state.device.type, False):
        return torch.ops.sparsekern_C.take_noise.default(state, numel)
    return _take_noise(state, numel)
