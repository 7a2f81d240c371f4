"""The ``cpu`` and ``cuda`` backends: the compiled kernels of ``sparsekern._C``.

Every function of ``sparsekern.backends.reference`` is here with the same signature and
calls ``torch.ops.sparsekern_C.<name>``, which dispatches to the CPU or CUDA
kernel by the tensors' device. Seeds/offsets (ints in [0, 2**64)) cross into
C++ as the int64 with the same bits. Fake kernels make the ops traceable and
opcheck-able.
"""
from __future__ import annotations

import torch

from sparsekern.backends import extension

_U64 = 1 << 64


def _i64(v: int) -> int:
    """The int64 with the bits of a uint64 (the C++ side reinterprets it back)."""
    return v - _U64 if v >= (1 << 63) else v


def _ops():
    if not extension.compiled_available():
        raise RuntimeError(f"sparsekern: compiled kernels are not available ({extension.LOAD_ERROR})")
    return torch.ops.sparsekern_C


def soft_threshold(weight, s):
    return _ops().soft_threshold(weight, s)


def soft_threshold_backward(grad, weight, s):
    return tuple(_ops().soft_threshold_backward(grad, weight, s))


def hard_concrete(log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return _ops().hard_concrete(log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def hard_concrete_backward(grad, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return _ops().hard_concrete_backward(grad, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def hard_concrete_eval(log_alpha, gamma: float, zeta: float):
    return _ops().hard_concrete_eval(log_alpha, gamma, zeta)


def hard_concrete_eval_backward(grad, log_alpha, gamma: float, zeta: float):
    return _ops().hard_concrete_eval_backward(grad, log_alpha, gamma, zeta)


def l0_norm(log_alpha, beta: float, gamma: float, zeta: float):
    return _ops().l0_norm(log_alpha, beta, gamma, zeta)


def l0_norm_backward(grad, log_alpha, beta: float, gamma: float, zeta: float):
    return _ops().l0_norm_backward(grad, log_alpha, beta, gamma, zeta)


def gated_weight(weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return _ops().gated_weight(weight, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def gated_weight_backward(grad, weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return tuple(_ops().gated_weight_backward(grad, weight, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta))


def gated_activation(x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return _ops().gated_activation(x, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def gated_activation_backward(grad, x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return tuple(_ops().gated_activation_backward(grad, x, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta))


def uniform(numel: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32, device=device)
    _ops().uniform(out, _i64(seed), _i64(offset))
    return out


# ---------------------------------------------------------------- fake kernels
def _param_grad(param):
    return param.new_empty(param.shape, dtype=torch.float64 if param.dtype == torch.float64 else torch.float32)


def _register_fakes() -> None:
    reg = torch.library.register_fake
    ns = "sparsekern_C::"
    reg(ns + "soft_threshold")(lambda weight, s: torch.empty_like(weight))
    reg(ns + "soft_threshold_backward")(lambda grad, weight, s: (torch.empty_like(weight), _param_grad(s)))
    reg(ns + "hard_concrete_eval")(lambda log_alpha, *args: torch.empty_like(log_alpha))
    reg(ns + "hard_concrete_eval_backward")(lambda grad, log_alpha, *args: _param_grad(log_alpha))
    reg(ns + "l0_norm")(lambda log_alpha, *args: log_alpha.new_empty(()))
    reg(ns + "l0_norm_backward")(lambda grad, log_alpha, *args: _param_grad(log_alpha))
    reg(ns + "uniform")(lambda out, seed, offset: None)
    reg(ns + "take_noise")(lambda state, numel: torch.empty_like(state))
    for gate_op in ("", "_at"):  # int (seed, offset), or the `_at` variant's noise tensor: same outputs
        reg(ns + "hard_concrete" + gate_op)(lambda log_alpha, *args: torch.empty_like(log_alpha))
        reg(ns + f"hard_concrete{gate_op}_backward")(lambda grad, log_alpha, *args: _param_grad(log_alpha))
        reg(ns + "gated_weight" + gate_op)(lambda weight, log_alpha, *args: torch.empty_like(weight))
        reg(ns + f"gated_weight{gate_op}_backward")(
            lambda grad, weight, log_alpha, *args: (torch.empty_like(weight), _param_grad(log_alpha))
        )
        reg(ns + "gated_activation" + gate_op)(lambda x, log_alpha, *args: torch.empty_like(x))
        reg(ns + f"gated_activation{gate_op}_backward")(
            lambda grad, x, log_alpha, *args: (torch.empty_like(x), _param_grad(log_alpha))
        )


if extension.compiled_available():
    _register_fakes()
