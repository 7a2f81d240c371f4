"""The `torch` backend: pure-PyTorch kernels, written straight from docs/math.md.

This module is the executable specification and the contract every backend
implements: a backend is a module with exactly these functions and signatures.
Callers (``sparsekern.ops``) have already validated the arguments, so kernels
may assume:

* tensors are on one device and contiguous; weights/x/log_alpha are floating;
* ``s`` has 1 or ``weight.shape[0]`` elements; ``log_alpha`` of ``gated_weight``
  has ``weight.numel()`` elements (one gate per weight) or ``weight.shape[0]``
  (one per row); ``log_alpha`` of ``gated_activation`` has ``x.shape[1]``;
* ``seed`` and ``offset`` are Python ints in [0, 2**64); this backend also takes them as
  int64 0-dim tensors with the same bits (what a CUDA graph capture reads, see noise_ops).

Math runs in float32 (float64 for float64 inputs); outputs have the dtype of
the tensor they replace; gradients of ``s`` / ``log_alpha`` are returned in
float32 (float64 for float64 parameters) with the parameter's shape.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-6
UNIFORM_SCALE = 4.6566127342e-10
_MASK32 = 0xFFFFFFFF
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _math(t: torch.Tensor) -> torch.Tensor:
    return t.to(compute_dtype(t))


# ---------------------------------------------------------------- Philox (docs/math.md §4)
def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for a constant a and uint32 values in int64 b."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p0 = b * a_lo  # < 2**48: exact in int64
    p1 = b * a_hi
    hi = (p1 + (p0 >> 16)) >> 16
    lo = (((p1 & 0xFFFF) << 16) + p0) & _MASK32
    return hi, lo


def philox_r0(counter: torch.Tensor, seed: int) -> torch.Tensor:
    """First output word of Philox4x32-10 for 64-bit counters (int64 tensor, wrapping)."""
    c0 = counter & _MASK32
    c1 = (counter >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0


def _as_int64(x):
    if isinstance(x, torch.Tensor):
        return x
    return x - (1 << 64) if x >= (1 << 63) else x


def uniform(numel: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    """docs/math.md §4: u_i for i in [0, numel), float32."""
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    counter = idx + _as_int64(offset)  # 64-bit wrap-around, like uint64 in C
    r0 = philox_r0(counter, seed)
    x = torch.where(r0 >= (1 << 31), r0 - (1 << 32), r0)  # reinterpret as int32
    x = torch.where(x < 0, -x - 1, x)  # ~x
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


# ---------------------------------------------------------------- STR (docs/math.md §1)
def _rows(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """View of a per-row parameter that broadcasts against t ([C] -> [C, 1, ...])."""
    if param.numel() == 1:
        return param.reshape(())
    return param.reshape((-1,) + (1,) * (t.dim() - 1))


def _reduce_rows(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Sum t over the group each element of param owns; shape of param."""
    if param.numel() == 1:
        return t.sum().reshape(param.shape)
    return t.reshape(param.numel(), math.prod(t.shape[1:])).sum(1).reshape(param.shape)


def soft_threshold(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    w = _math(weight)
    t = torch.sigmoid(_rows(w, s.to(w.dtype)))
    return (torch.sign(w) * torch.clamp(w.abs() - t, min=0)).to(weight.dtype)


def soft_threshold_backward(grad: torch.Tensor, weight: torch.Tensor, s: torch.Tensor):
    w, g = _math(weight), _math(grad)
    sig = torch.sigmoid(s.to(w.dtype))
    m = w.abs() > _rows(w, sig)
    gm = torch.where(m, g, torch.zeros_like(g))
    grad_w = gm.to(weight.dtype)
    grad_s = -sig * (1 - sig) * _reduce_rows(gm * torch.sign(w), s)
    return grad_w, grad_s.to(compute_dtype(s))


# ---------------------------------------------------------------- hard concrete (docs/math.md §2)
def _sample(log_alpha: torch.Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    """(z, dz/dlog_alpha) of a training sample, in compute precision."""
    la = _math(log_alpha)
    u = uniform(la.numel(), seed, offset, la.device).reshape(la.shape).to(la.dtype)
    u = u.clamp(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la) / beta)
    s_bar = s * (zeta - gamma) + gamma
    z = s_bar.clamp(0, 1)
    inside = (s_bar > 0) & (s_bar < 1)
    dz = torch.where(inside, (zeta - gamma) * s * (1 - s) / beta, torch.zeros_like(s))
    return z, dz


def _eval_gate(log_alpha: torch.Tensor, gamma: float, zeta: float):
    la = _math(log_alpha)
    sig = torch.sigmoid(la)
    s_bar = sig * (zeta - gamma) + gamma
    inside = (s_bar > 0) & (s_bar < 1)
    dz = torch.where(inside, (zeta - gamma) * sig * (1 - sig), torch.zeros_like(sig))
    return s_bar.clamp(0, 1), dz


def hard_concrete(log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    return _sample(log_alpha, seed, offset, beta, gamma, zeta)[0].to(log_alpha.dtype)


def hard_concrete_backward(grad, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    _, dz = _sample(log_alpha, seed, offset, beta, gamma, zeta)
    return _math(grad) * dz


def hard_concrete_eval(log_alpha, gamma: float, zeta: float):
    return _eval_gate(log_alpha, gamma, zeta)[0].to(log_alpha.dtype)


def hard_concrete_eval_backward(grad, log_alpha, gamma: float, zeta: float):
    return _math(grad) * _eval_gate(log_alpha, gamma, zeta)[1]


def _l0_shift(beta: float, gamma: float, zeta: float) -> float:
    return beta * float(torch.log(torch.tensor(-gamma / zeta, dtype=torch.float64)))


def l0_norm(log_alpha, beta: float, gamma: float, zeta: float):
    p = torch.sigmoid(_math(log_alpha) - _l0_shift(beta, gamma, zeta))
    return p.sum().to(log_alpha.dtype)


def l0_norm_backward(grad, log_alpha, beta: float, gamma: float, zeta: float):
    p = torch.sigmoid(_math(log_alpha) - _l0_shift(beta, gamma, zeta))
    return _math(grad) * p * (1 - p)


def gated_weight(weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    z, _ = _sample(log_alpha.reshape(-1), seed, offset, beta, gamma, zeta)
    w = _math(weight)
    return (w * _rows(w, z) if z.numel() != w.numel() else w * z.reshape(w.shape)).to(weight.dtype)


def gated_weight_backward(grad, weight, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    z, dz = _sample(log_alpha.reshape(-1), seed, offset, beta, gamma, zeta)
    w, g = _math(weight), _math(grad)
    per_weight = z.numel() == w.numel()
    zb = z.reshape(w.shape) if per_weight else _rows(w, z)
    grad_w = (g * zb).to(weight.dtype)
    gw = (g * w).reshape(-1) if per_weight else _reduce_rows(g * w, z)
    grad_la = (gw.reshape(-1) * dz).reshape(log_alpha.shape)
    return grad_w, grad_la


def _activation_gates(x, log_alpha, seed, offset, beta, gamma, zeta):
    """Per-example gates [B, C] (RNG index b*C + c) and their derivative."""
    batch, channels = x.shape[0], x.shape[1]
    la = log_alpha.reshape(1, channels).expand(batch, channels).contiguous()
    return _sample(la, seed, offset, beta, gamma, zeta)


def gated_activation(x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    z, _ = _activation_gates(x, log_alpha, seed, offset, beta, gamma, zeta)
    xm = _math(x)
    return (xm * z.reshape(z.shape + (1,) * (x.dim() - 2))).to(x.dtype)


def gated_activation_backward(grad, x, log_alpha, seed: int, offset: int, beta: float, gamma: float, zeta: float):
    z, dz = _activation_gates(x, log_alpha, seed, offset, beta, gamma, zeta)
    xm, g = _math(x), _math(grad)
    zb = z.reshape(z.shape + (1,) * (x.dim() - 2))
    grad_x = (g * zb).to(x.dtype)
    gx = (g * xm).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:])).sum(2)  # [B, C]
    grad_la = (gx * dz).sum(0).reshape(log_alpha.shape)
    return grad_x, grad_la
