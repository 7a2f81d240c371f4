"""Public ops: argument checks, torch.library custom ops, fake kernels, autograd.

Each op is a ``sparsekern::<name>`` custom op whose body runs the kernel of the
backend chosen for its inputs (see ``sparsekern.backends``); its backward is a
second custom op that recomputes masks and gate noise from the saved inputs and
(seed, offset), so nothing of weight size is kept beyond the inputs.
Custom ops are opaque to ``torch.compile``: graphs using them have no breaks. Under inductor the
deterministic ones lower to their formulas instead, which it fuses (``sparsekern.inductor_decomps``).
Eager calls that resolve to the compiled backends skip the custom op and call
``torch.ops.sparsekern_C`` directly, whose autograd is registered in C++ (``sparsekern.direct``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsekern import backends, direct, inductor_decomps

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_U64 = 1 << 64
_I64_END = 1 << 63
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


# ---------------------------------------------------------------- argument checks
def _check_float(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _check_same_device(op: str, first: tuple[str, Tensor], other: tuple[str, Tensor]) -> None:
    if first[1].device != other[1].device:
        raise ValueError(
            f"{op}: {other[0]} is on {other[1].device} but {first[0]} is on {first[1].device}; "
            "move them to the same device"
        )


def _check_rows(op: str, name: str, param: Tensor, tensor_name: str, t: Tensor, allow_full: bool = False) -> None:
    n = param.numel()
    if n == 1 or (t.dim() > 0 and n == t.shape[0]) or (allow_full and param.shape == t.shape):
        return
    rows = t.shape[0] if t.dim() > 0 else 1
    full = f" or {tensor_name}'s shape {tuple(t.shape)}" if allow_full else ""
    raise ValueError(
        f"{op}: {name} must have 1 element or {tensor_name}.shape[0] = {rows} elements{full}; "
        f"got shape {tuple(param.shape)}"
    )


def _check_hc(op: str, beta: float, gamma: float, zeta: float) -> None:
    for name, v in (("beta", beta), ("gamma", gamma), ("zeta", zeta)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{op}: {name} must be a finite number, got {v!r}")
    if beta <= 0:
        raise ValueError(f"{op}: beta must be > 0, got {beta}")
    if not gamma < 0 < 1 < zeta:
        raise ValueError(f"{op}: need gamma < 0 and zeta > 1 (the stretch interval), got gamma={gamma}, zeta={zeta}")


def _u64(op: str, name: str, v) -> int:
    """Validate a 64-bit unsigned seed/offset and map it to int64 for the op schema."""
    if type(v) is int and 0 <= v < _I64_END:  # the common case first: every op call comes here
        return v
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if isinstance(v, int):
        if not 0 <= v < _U64:
            raise ValueError(f"{op}: {name} must be in [0, 2**64), got {v}")
        return v - _U64 if v >= _I64_END else v
    return v


def _check_noise(op: str, noise: Tensor, offset, data: tuple[str, Tensor]) -> Tensor:
    """A noise-state tensor passed as ``seed``: int64 ``[seed, offset]`` (see ``sparsekern.noise_ops``)."""
    if noise.dtype != torch.int64 or noise.shape != (2,):
        raise TypeError(f"{op}: seed must be an int, or an int64 noise tensor of shape (2,) holding (seed, offset); "
                        f"got a {noise.dtype} tensor of shape {tuple(noise.shape)}")
    _check_same_device(op, data, ("the noise tensor (seed)", noise))  # the kernels read it where they run
    if not (isinstance(offset, int) and offset == 0):
        raise ValueError(f"{op}: offset must be left out when seed is a noise tensor (it holds the offset)")
    return noise


def _unsigned(v: int) -> int:
    return v + _U64 if v < 0 else v


def _backend_name(*tensors: Tensor) -> str:
    dtype = tensors[0].dtype
    for x in tensors:
        if x.dtype == torch.float64:
            dtype = torch.float64
    return backends.resolve_name(tensors[0].device, dtype)


def _kernels(*tensors: Tensor):
    return backends.module(_backend_name(*tensors))


def _fast(*tensors: Tensor) -> bool:
    """Eager call on a compiled backend: straight to torch.ops.sparsekern_C (see sparsekern.direct)."""
    return direct.eligible(*tensors) and _backend_name(*tensors) in direct.BACKENDS


def _dispatch_sample(op: str, custom_op, tensors: tuple[Tensor, ...], first: str, seed, offset, hc: tuple) -> Tensor:
    """The sampling ops after their checks: a noise tensor goes to the ``<op>_at`` op, int (seed,
    offset) to the eager fast path or the custom op. ``tensors``: the data (log_alpha last), the
    first of them named ``first`` in errors."""
    if isinstance(seed, Tensor):
        return noise_ops.OPS[op](*tensors, _check_noise(op, seed, offset, (first, tensors[0])), *hc)
    seed, offset = _u64(op, "seed", seed), _u64(op, "offset", offset)
    if _fast(*tensors):
        return direct.OPS[op](*tensors, seed, offset, *hc)
    return custom_op(*tensors, seed, offset, *hc)


def _grad_dtype(param: Tensor, grad: Tensor) -> Tensor:
    return grad.to(param.dtype)


def _param_grad_dtype(param: Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- soft threshold
@torch.library.custom_op("sparsekern::soft_threshold", mutates_args=())
def _soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    return _kernels(weight, s).soft_threshold(weight.contiguous(), s.contiguous())


@_soft_threshold.register_fake
def _(weight, s):
    inductor_decomps.register()
    return weight.new_empty(weight.shape)


@torch.library.custom_op("sparsekern::soft_threshold_backward", mutates_args=())
def _soft_threshold_backward(grad: Tensor, weight: Tensor, s: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return backends.module(backend).soft_threshold_backward(grad.contiguous(), weight.contiguous(), s.contiguous())


@_soft_threshold_backward.register_fake
def _(grad, weight, s, backend):
    return weight.new_empty(weight.shape), s.new_empty(s.shape, dtype=_param_grad_dtype(s))


def _soft_threshold_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.backend = _backend_name(*inputs)


def _soft_threshold_grad(ctx, grad):
    weight, s = ctx.saved_tensors
    grad_w, grad_s = _soft_threshold_backward(grad, weight, s, ctx.backend)
    return grad_w, _grad_dtype(s, grad_s)


_soft_threshold.register_autograd(_soft_threshold_grad, setup_context=_soft_threshold_setup)


def soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    """STR weight: ``sign(w) * relu(|w| - sigmoid(s))``; ``s`` per tensor (1 element) or per row."""
    op = "soft_threshold"
    _check_float(op, "weight", weight)
    _check_float(op, "s", s)
    _check_same_device(op, ("weight", weight), ("s", s))
    _check_rows(op, "s", s, "weight", weight)
    if _fast(weight, s):
        return direct.OPS[op](weight, s)
    return _soft_threshold(weight, s)


# ---------------------------------------------------------------- hard concrete sample
@torch.library.custom_op("sparsekern::hard_concrete", mutates_args=())
def _hard_concrete(log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float) -> Tensor:
    return _kernels(log_alpha).hard_concrete(
        log_alpha.contiguous(), _unsigned(seed), _unsigned(offset), beta, gamma, zeta
    )


@_hard_concrete.register_fake
def _(log_alpha, seed, offset, beta, gamma, zeta):
    return log_alpha.new_empty(log_alpha.shape)


@torch.library.custom_op("sparsekern::hard_concrete_backward", mutates_args=())
def _hard_concrete_backward(
    grad: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float, backend: str
) -> Tensor:
    return backends.module(backend).hard_concrete_backward(
        grad.contiguous(), log_alpha.contiguous(), _unsigned(seed), _unsigned(offset), beta, gamma, zeta
    )


@_hard_concrete_backward.register_fake
def _(grad, log_alpha, seed, offset, beta, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=_param_grad_dtype(log_alpha))


def _save_all(ctx, inputs, output):
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    ctx.save_for_backward(*tensors)
    ctx.scalars = tuple(x for x in inputs if not isinstance(x, Tensor))
    # The backward runs on the forward's backend: autograd may call it from another
    # thread, where a (thread-local) use_backend() block is not in effect.
    ctx.backend = _backend_name(*tensors)


def _hard_concrete_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _hard_concrete_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return (_grad_dtype(log_alpha, g),) + (None,) * len(ctx.scalars)


_hard_concrete.register_autograd(_hard_concrete_grad, setup_context=_save_all)


def hard_concrete(log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                  gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """A training sample z of hard-concrete gates; noise index i uses counter ``offset + i`` (docs/math.md §4).

    ``seed`` may instead be an int64 tensor ``[seed, offset]`` (a module's noise state): same
    numbers, and ``torch.compile`` treats the counter as data instead of a guarded constant.
    """
    op = "hard_concrete"
    _check_float(op, "log_alpha", log_alpha)
    _check_hc(op, beta, gamma, zeta)
    return _dispatch_sample(op, _hard_concrete, (log_alpha,), "log_alpha", seed, offset, (beta, gamma, zeta))


# ---------------------------------------------------------------- deterministic gate
@torch.library.custom_op("sparsekern::hard_concrete_eval", mutates_args=())
def _hard_concrete_eval(log_alpha: Tensor, gamma: float, zeta: float) -> Tensor:
    return _kernels(log_alpha).hard_concrete_eval(log_alpha.contiguous(), gamma, zeta)


@_hard_concrete_eval.register_fake
def _(log_alpha, gamma, zeta):
    inductor_decomps.register()
    return log_alpha.new_empty(log_alpha.shape)


@torch.library.custom_op("sparsekern::hard_concrete_eval_backward", mutates_args=())
def _hard_concrete_eval_backward(grad: Tensor, log_alpha: Tensor, gamma: float, zeta: float, backend: str) -> Tensor:
    return backends.module(backend).hard_concrete_eval_backward(grad.contiguous(), log_alpha.contiguous(), gamma, zeta)


@_hard_concrete_eval_backward.register_fake
def _(grad, log_alpha, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=_param_grad_dtype(log_alpha))


def _hard_concrete_eval_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _hard_concrete_eval_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return _grad_dtype(log_alpha, g), None, None


_hard_concrete_eval.register_autograd(_hard_concrete_eval_grad, setup_context=_save_all)


def hard_concrete_eval(log_alpha: Tensor, *, gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """Deterministic (eval-mode) gate ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``."""
    op = "hard_concrete_eval"
    _check_float(op, "log_alpha", log_alpha)
    _check_hc(op, BETA, gamma, zeta)
    if _fast(log_alpha):
        return direct.OPS[op](log_alpha, gamma, zeta)
    return _hard_concrete_eval(log_alpha, gamma, zeta)


# ---------------------------------------------------------------- expected L0
@torch.library.custom_op("sparsekern::l0_norm", mutates_args=())
def _l0_norm(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    return _kernels(log_alpha).l0_norm(log_alpha.contiguous(), beta, gamma, zeta)


@_l0_norm.register_fake
def _(log_alpha, beta, gamma, zeta):
    inductor_decomps.register()
    return log_alpha.new_empty(())


@torch.library.custom_op("sparsekern::l0_norm_backward", mutates_args=())
def _l0_norm_backward(grad: Tensor, log_alpha: Tensor, beta: float, gamma: float, zeta: float, backend: str) -> Tensor:
    return backends.module(backend).l0_norm_backward(grad.contiguous(), log_alpha.contiguous(), beta, gamma, zeta)


@_l0_norm_backward.register_fake
def _(grad, log_alpha, beta, gamma, zeta, backend):
    return log_alpha.new_empty(log_alpha.shape, dtype=_param_grad_dtype(log_alpha))


def _l0_norm_grad(ctx, grad):
    (log_alpha,) = ctx.saved_tensors
    g = _l0_norm_backward(grad, log_alpha, *ctx.scalars, ctx.backend)
    return _grad_dtype(log_alpha, g), None, None, None


_l0_norm.register_autograd(_l0_norm_grad, setup_context=_save_all)


def l0_norm(log_alpha: Tensor, *, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """Expected number of non-zero gates: ``sum sigmoid(log_alpha - beta * log(-gamma / zeta))``."""
    op = "l0_norm"
    _check_float(op, "log_alpha", log_alpha)
    _check_hc(op, beta, gamma, zeta)
    if _fast(log_alpha):
        return direct.OPS[op](log_alpha, beta, gamma, zeta)
    return _l0_norm(log_alpha, beta, gamma, zeta)


# ---------------------------------------------------------------- gated weight
@torch.library.custom_op("sparsekern::gated_weight", mutates_args=())
def _gated_weight(weight: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float,
                  zeta: float) -> Tensor:
    return _kernels(weight, log_alpha).gated_weight(
        weight.contiguous(), log_alpha.contiguous(), _unsigned(seed), _unsigned(offset), beta, gamma, zeta
    )


@_gated_weight.register_fake
def _(weight, log_alpha, seed, offset, beta, gamma, zeta):
    return weight.new_empty(weight.shape)


@torch.library.custom_op("sparsekern::gated_weight_backward", mutates_args=())
def _gated_weight_backward(grad: Tensor, weight: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float,
                           gamma: float, zeta: float, backend: str) -> tuple[Tensor, Tensor]:
    return backends.module(backend).gated_weight_backward(
        grad.contiguous(), weight.contiguous(), log_alpha.contiguous(), _unsigned(seed), _unsigned(offset),
        beta, gamma, zeta,
    )


@_gated_weight_backward.register_fake
def _(grad, weight, log_alpha, seed, offset, beta, gamma, zeta, backend):
    return weight.new_empty(weight.shape), log_alpha.new_empty(log_alpha.shape, dtype=_param_grad_dtype(log_alpha))


def _gated_weight_grad(ctx, grad):
    weight, log_alpha = ctx.saved_tensors
    grad_w, grad_la = _gated_weight_backward(grad, weight, log_alpha, *ctx.scalars, ctx.backend)
    return (grad_w, _grad_dtype(log_alpha, grad_la)) + (None,) * len(ctx.scalars)


_gated_weight.register_autograd(_gated_weight_grad, setup_context=_save_all)


def gated_weight(weight: Tensor, log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                 gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """``weight * z`` with z sampled from ``log_alpha`` (weight's shape, or one gate per row).

    ``seed``: an int, or an int64 noise tensor ``[seed, offset]`` as in ``hard_concrete``."""
    op = "gated_weight"
    _check_float(op, "weight", weight)
    _check_float(op, "log_alpha", log_alpha)
    _check_same_device(op, ("weight", weight), ("log_alpha", log_alpha))
    _check_rows(op, "log_alpha", log_alpha, "weight", weight, allow_full=True)
    _check_hc(op, beta, gamma, zeta)
    return _dispatch_sample(op, _gated_weight, (weight, log_alpha), "weight", seed, offset, (beta, gamma, zeta))


# ---------------------------------------------------------------- gated activation
@torch.library.custom_op("sparsekern::gated_activation", mutates_args=())
def _gated_activation(x: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float,
                      zeta: float) -> Tensor:
    return _kernels(x, log_alpha).gated_activation(
        x.contiguous(), log_alpha.contiguous(), _unsigned(seed), _unsigned(offset), beta, gamma, zeta
    )


@_gated_activation.register_fake
def _(x, log_alpha, seed, offset, beta, gamma, zeta):
    return x.new_empty(x.shape)


@torch.library.custom_op("sparsekern::gated_activation_backward", mutates_args=())
def _gated_activation_backward(grad: Tensor, x: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float,
                               gamma: float, zeta: float, backend: str) -> tuple[Tensor, Tensor]:
    return backends.module(backend).gated_activation_backward(
        grad.contiguous(), x.contiguous(), log_alpha.contiguous(), _unsigned(seed), _unsigned(offset),
        beta, gamma, zeta,
    )


@_gated_activation_backward.register_fake
def _(grad, x, log_alpha, seed, offset, beta, gamma, zeta, backend):
    return x.new_empty(x.shape), log_alpha.new_empty(log_alpha.shape, dtype=_param_grad_dtype(log_alpha))


def _gated_activation_grad(ctx, grad):
    x, log_alpha = ctx.saved_tensors
    grad_x, grad_la = _gated_activation_backward(grad, x, log_alpha, *ctx.scalars, ctx.backend)
    return (grad_x, _grad_dtype(log_alpha, grad_la)) + (None,) * len(ctx.scalars)


_gated_activation.register_autograd(_gated_activation_grad, setup_context=_save_all)


def gated_activation(x: Tensor, log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                     gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """``x * z`` for x of shape [B, C, ...]; z [B, C] sampled per example, RNG index ``b * C + c``.

    ``seed``: an int, or an int64 noise tensor ``[seed, offset]`` as in ``hard_concrete``."""
    op = "gated_activation"
    _check_float(op, "x", x)
    _check_float(op, "log_alpha", log_alpha)
    _check_same_device(op, ("x", x), ("log_alpha", log_alpha))
    if x.dim() < 2:
        raise ValueError(f"gated_activation: x must have shape [B, C, ...], got {tuple(x.shape)}")
    if log_alpha.numel() != x.shape[1]:
        raise ValueError(
            f"gated_activation: log_alpha must have x.shape[1] = {x.shape[1]} elements, got shape "
            f"{tuple(log_alpha.shape)}"
        )
    _check_hc(op, beta, gamma, zeta)
    return _dispatch_sample(op, _gated_activation, (x, log_alpha), "x", seed, offset, (beta, gamma, zeta))


# ---------------------------------------------------------------- the random stream
def _uniform_impl(numel: int, seed: int, offset: int, device: torch.device) -> Tensor:
    return backends.resolve(device).uniform(numel, _unsigned(seed), _unsigned(offset), device)


_uniform = torch.library.custom_op("sparsekern::uniform", _uniform_impl, mutates_args=())


@_uniform.register_fake
def _(numel, seed, offset, device):
    return torch.empty(numel, dtype=torch.float32, device=device)


def uniform(numel: int, seed: int, offset: int = 0, *, device: torch.device | str = "cpu") -> Tensor:
    """The uniform stream of docs/math.md §4, u_i = U(Philox(seed, offset + i)), i < numel, as float32."""
    op = "uniform"
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"uniform: numel must be a non-negative int, got {numel!r}")
    seed, offset = _u64(op, "seed", seed), _u64(op, "offset", offset)
    device = device if type(device) is torch.device else torch.device(device)
    if direct.eligible():  # no autograd: any backend's kernel may run without the custom op
        backend = backends.resolve_name(device)
        if backend == "cpu":
            return direct.uniform_cpu(numel, seed, offset)
        if backend in direct.BACKENDS:
            return direct.uniform(numel, seed, offset, device)
        return _uniform_impl(numel, seed, offset, device)
    return _uniform(numel, seed, offset, device)


from sparsekern import noise_ops  # noqa: E402  (the tensor-noise variants; it uses the helpers above)
