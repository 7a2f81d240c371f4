"""The ``triton`` backend: every function of ``sparsekern.backends.reference``, on Triton kernels.

Callers (``sparsekern.ops``) pass contiguous float32/float16/bfloat16 tensors
and seeds/offsets as ints in [0, 2**64); the ops take them as int64. Beyond the
reference's functions, ``<op>_at`` take the noise as the int64 tensor [seed, offset]
that the kernels read themselves (``sparsekern.ops.noise``: no host read of the counter).
"""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern.backends.triton import ops

_U64 = 1 << 64


def _i64(v: int) -> int:
    return v - _U64 if v >= (1 << 63) else v


def soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    return ops.soft_threshold(weight, s)


def soft_threshold_backward(grad: Tensor, weight: Tensor, s: Tensor):
    return ops.soft_threshold_backward(grad, weight, s)


def hard_concrete(log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.hard_concrete(log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def hard_concrete_backward(grad, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.hard_concrete_backward(grad, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def hard_concrete_eval(log_alpha, gamma: float, zeta: float):
    return ops.hard_concrete_eval(log_alpha, gamma, zeta)


def hard_concrete_eval_backward(grad, log_alpha, gamma: float, zeta: float):
    return ops.hard_concrete_eval_backward(grad, log_alpha, gamma, zeta)


def l0_norm(log_alpha, beta: float, gamma: float, zeta: float):
    return ops.l0_norm(log_alpha, beta, gamma, zeta)


def l0_norm_backward(grad, log_alpha, beta: float, gamma: float, zeta: float):
    return ops.l0_norm_backward(grad, log_alpha, beta, gamma, zeta)


def gated_weight(weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.gated_weight(weight, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def gated_weight_backward(grad, weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.gated_weight_backward(grad, weight, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def gated_activation(x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.gated_activation(x, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def gated_activation_backward(grad, x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return ops.gated_activation_backward(grad, x, log_alpha, _i64(seed), _i64(offset), beta, gamma, zeta)


def hard_concrete_at(log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.hard_concrete_at(log_alpha, noise, beta, gamma, zeta)


def hard_concrete_at_backward(grad, log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.hard_concrete_at_backward(grad, log_alpha, noise, beta, gamma, zeta)


def gated_weight_at(weight, log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.gated_weight_at(weight, log_alpha, noise, beta, gamma, zeta)


def gated_weight_at_backward(grad, weight, log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.gated_weight_at_backward(grad, weight, log_alpha, noise, beta, gamma, zeta)


def gated_activation_at(x, log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.gated_activation_at(x, log_alpha, noise, beta, gamma, zeta)


def gated_activation_at_backward(grad, x, log_alpha, noise: Tensor, beta: float, gamma: float, zeta: float):
    return ops.gated_activation_at_backward(grad, x, log_alpha, noise, beta, gamma, zeta)


def uniform(numel: int, seed: int, offset: int, device: torch.device) -> Tensor:
    out = torch.empty(numel, dtype=torch.float32, device=device)
    ops.uniform_(out, _i64(seed), _i64(offset))
    return out
