"""The ``sparsekern::<op>`` custom ops: each runs the selected backend's kernel, and its backward is
a second custom op that recomputes masks and gate noise from the saved inputs and (seed, offset),
so nothing of weight size is kept beyond the inputs.

Custom ops are opaque to ``torch.compile``: graphs using them have no breaks. Under inductor the
deterministic ones lower to their formulas instead, which it fuses (``sparsekern.ops.inductor``);
the fake kernels of those register the lowering, since they run only while a graph is traced.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern import backends
from sparsekern.ops import inductor
from sparsekern.ops.checks import unsigned
from sparsekern.ops.dispatch import backend_name, kernels, param_grad_dtype

_HC = "float beta, float gamma, float zeta"


def _in_dtype(param: Tensor, grad: Tensor) -> Tensor:
    """A parameter's gradient in the parameter's own dtype (the kernels return float32)."""
    return grad.to(param.dtype)


def _save_all(ctx, inputs, output):
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    ctx.save_for_backward(*tensors)
    ctx.scalars = tuple(x for x in inputs if not isinstance(x, Tensor))
    # The backward runs on the forward's backend: autograd may call it from another
    # thread, where a (thread-local) use_backend() block is not in effect.
    ctx.backend = backend_name(*tensors)


# ---------------------------------------------------------------- soft threshold
@torch.library.custom_op("sparsekern::soft_threshold", mutates_args=())
def soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    return kernels(weight, s).soft_threshold(weight.contiguous(), s.contiguous())


@soft_threshold.register_fake
def _(weight, s):
    inductor.register()
    return weight.new_empty(weight.shape)


@torch.library.custom_op("sparsekern::soft_threshold_backward", mutates_args=())
def _soft_threshold_backward(grad: Tensor, weight: Tensor, s: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return backends.module(backend).soft_threshold_backward(grad.contiguous(), weight.contiguous(), s.contiguous())


@_soft_threshold_backward.register_fake
def _(grad, weight, s, backend):
    return weight.new_empty(weight.shape), s.new_empty(s.shape, dtype=param_grad_dtype(s))


def _soft_threshold_grad(ctx, grad):
    weight, s = ctx.saved_tensors
    grad_w, grad_s = _soft_threshold_backward(grad, weight, s, ctx.backend)
    return grad_w, _in_dtype(s, grad_s)


soft_threshold.register_autograd(_soft_threshold_grad, setup_context=_save_all)


# ---------------------------------------------------------------- hard concrete sample
@torch.library.custom_op("sparsekern::hard_concrete", mutates_args=())
def hard_concrete(log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float) -> Tensor:
    return kernels(log_alpha).hard_concrete(log_alpha.contiguous(), unsigned(seed), unsigned(offset), beta, gamma, zeta)


@hard_concrete.register_fake
def _(log_alpha, seed, offset, beta, gamma, zeta):
    return log_alpha.new_empty(log_alpha.shape)


@torch.library.custom_op("sparsekern::hard_concrete_backward", mutates_args=())
def _hard_concrete_backward(
    grad: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float, backend: str
) -> Tensor:
    return backends.module(backend).hard_concrete_backward(
        grad.contiguous(), log_alpha.contiguous(), unsigned(seed), unsigned(offset), beta, gamma, zeta
    )


@_hard_concrete_backward.register_fake
def _(grad, log_alpha, seed, offset, beta, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=param_grad_dtype(log_alpha))


def _hard_concrete_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _hard_concrete_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return (_in_dtype(log_alpha, g),) + (None,) * len(ctx.scalars)


hard_concrete.register_autograd(_hard_concrete_grad, setup_context=_save_all)


# ---------------------------------------------------------------- deterministic gate
@torch.library.custom_op("sparsekern::hard_concrete_eval", mutates_args=())
def hard_concrete_eval(log_alpha: Tensor, gamma: float, zeta: float) -> Tensor:
    return kernels(log_alpha).hard_concrete_eval(log_alpha.contiguous(), gamma, zeta)


@hard_concrete_eval.register_fake
def _(log_alpha, gamma, zeta):
    inductor.register()
    return log_alpha.new_empty(log_alpha.shape)


@torch.library.custom_op("sparsekern::hard_concrete_eval_backward", mutates_args=())
def _hard_concrete_eval_backward(grad: Tensor, log_alpha: Tensor, gamma: float, zeta: float, backend: str) -> Tensor:
    return backends.module(backend).hard_concrete_eval_backward(grad.contiguous(), log_alpha.contiguous(), gamma, zeta)


@_hard_concrete_eval_backward.register_fake
def _(grad, log_alpha, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=param_grad_dtype(log_alpha))


def _hard_concrete_eval_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _hard_concrete_eval_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return _in_dtype(log_alpha, g), None, None


hard_concrete_eval.register_autograd(_hard_concrete_eval_grad, setup_context=_save_all)


# ---------------------------------------------------------------- expected L0
@torch.library.custom_op("sparsekern::l0_norm", mutates_args=())
def l0_norm(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    return kernels(log_alpha).l0_norm(log_alpha.contiguous(), beta, gamma, zeta)


@l0_norm.register_fake
def _(log_alpha, beta, gamma, zeta):
    inductor.register()
    return log_alpha.new_empty(())


@torch.library.custom_op("sparsekern::l0_norm_backward", mutates_args=())
def _l0_norm_backward(grad: Tensor, log_alpha: Tensor, beta: float, gamma: float, zeta: float, backend: str) -> Tensor:
    return backends.module(backend).l0_norm_backward(grad.contiguous(), log_alpha.contiguous(), beta, gamma, zeta)


@_l0_norm_backward.register_fake
def _(grad, log_alpha, beta, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=param_grad_dtype(log_alpha))


def _l0_norm_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _l0_norm_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return _in_dtype(log_alpha, g), None, None, None


l0_norm.register_autograd(_l0_norm_grad, setup_context=_save_all)


# ---------------------------------------------------------------- gated weight and gated activation
def _define_gated(name: str, data: str):
    """``sparsekern::<name>(data, log_alpha, seed, offset, hc)`` = ``data * z`` and its backward op,
    which returns the gradients of ``data`` and ``log_alpha``; the two ops differ only in the kernel."""
    args = f"Tensor {data}, Tensor log_alpha, SymInt seed, SymInt offset, {_HC}"

    def forward(x, log_alpha, seed, offset, beta, gamma, zeta):
        return getattr(kernels(x, log_alpha), name)(
            x.contiguous(), log_alpha.contiguous(), unsigned(seed), unsigned(offset), beta, gamma, zeta)

    def backward(grad, x, log_alpha, seed, offset, beta, gamma, zeta, backend):
        return tuple(getattr(backends.module(backend), name + "_backward")(
            grad.contiguous(), x.contiguous(), log_alpha.contiguous(), unsigned(seed), unsigned(offset),
            beta, gamma, zeta))

    fwd = torch.library.custom_op(f"sparsekern::{name}", forward, mutates_args=(), schema=f"({args}) -> Tensor")
    bwd = torch.library.custom_op(f"sparsekern::{name}_backward", backward, mutates_args=(),
                                  schema=f"(Tensor grad, {args}, str backend) -> (Tensor, Tensor)")
    fwd.register_fake(lambda x, *rest: x.new_empty(x.shape))
    bwd.register_fake(lambda grad, x, log_alpha, *rest: (
        x.new_empty(x.shape), log_alpha.new_empty(log_alpha.shape, dtype=param_grad_dtype(log_alpha))))

    def grad_fn(ctx, grad):
        x, log_alpha = ctx.saved_tensors
        grad_x, grad_la = bwd(grad, x, log_alpha, *ctx.scalars, ctx.backend)
        return (grad_x, _in_dtype(log_alpha, grad_la)) + (None,) * len(ctx.scalars)

    fwd.register_autograd(grad_fn, setup_context=_save_all)
    return fwd


gated_weight = _define_gated("gated_weight", "weight")
gated_activation = _define_gated("gated_activation", "x")


# ---------------------------------------------------------------- the random stream
def uniform_kernel(numel: int, seed: int, offset: int, device: torch.device) -> Tensor:
    """The selected backend's uniform stream (seed/offset as the int64 bits of their uint64 values)."""
    return backends.resolve(device).uniform(numel, unsigned(seed), unsigned(offset), device)


uniform = torch.library.custom_op("sparsekern::uniform", uniform_kernel, mutates_args=())


@uniform.register_fake
def _(numel, seed, offset, device):
    return torch.empty(numel, dtype=torch.float32, device=device)
