"""The gate-sampling ops of the ``cpu`` backend as tensor ops, bit for bit its kernels, so that
inductor compiles them into the kernels around them (docs/math.md §2 and §4).

The Philox4x32-10 stream is integer arithmetic (``reference.philox_r0``: 32x32->64 products
split into 16-bit halves in int64, so nothing overflows); the uniform is SPEC 4's float
conversion. The float math repeats ``csrc/include/sparsekern/``: the CPU kernels use their own
branch-free exp/log polynomials (``elementary.h``), not libm, so these do too, in the kernels'
operation order, with float32 constants; inductor's C++ is built with ``-ffp-contract=off`` like
ours, so no product is fused into an FMA on either side. Noise is read from the ``noise`` tensor
``[seed, offset]`` (graph data); a backward regenerates it from there.

Elementwise results equal the kernels' bits (tests/test_gate_decomposition.py). Sums over a
group (the per-row/per-tensor ``log_alpha`` gradient of ``gated_weight`` and ``gated_activation``'s)
are added in inductor's order, not the kernels' lanes: equal to rounding of the sum.
float32 math only (fp16/bf16/fp32 data); float64 keeps the kernels (they call libm there).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsekern.backends import reference

_F32 = torch.float32


# ---------------------------------------------------------------- elementary.h, host_math
def _bits_to_float(bits: Tensor) -> Tensor:
    return bits.view(_F32)


def _exp(x: Tensor) -> Tensor:
    """host_math::exp: Cody-Waite reduction, degree-5 polynomial, 2**n as two exact factors."""
    xc = torch.where(x < -104.0, -104.0, torch.where(x > 88.8, 88.8, x))  # NaN passes through
    n = (xc * 1.44269504088896341 + 12582912.0) - 12582912.0  # round_small: + and - 1.5 * 2**23
    r = xc - n * 0.693359375
    r = r - n * -2.12194440e-4
    p = torch.full_like(r, 1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + c
    p = p * r * r + r + 1.0
    ni = torch.where(n == n, n, 0.0).to(torch.int32)
    half = ni >> 1
    scale_a = _bits_to_float((half + 127) << 23)
    scale_b = _bits_to_float((ni - half + 127) << 23)
    return (p * scale_a) * scale_b


_LOG_POLY = (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
             2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def _log_positive(x: Tensor) -> Tensor:
    """host_math::log_positive for positive normal x: exponent split, degree-8 polynomial."""
    bits = x.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 126
    m = _bits_to_float((bits & 0x007FFFFF) | 0x3F000000)
    low = m < 0.707106781186547524
    e = torch.where(low, e - 1, e)
    m = torch.where(low, m + m - 1.0, m - 1.0)
    fe = e.to(_F32)
    z = m * m
    y = torch.full_like(m, 7.0376836292e-2)
    for c in _LOG_POLY:
        y = y * m + c
    y = y * m * z
    y = y + fe * -2.12194440e-4
    y = y - 0.5 * z
    return (m + y) + fe * 0.693359375


def _sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + _exp(-x))


# ---------------------------------------------------------------- philox.h
_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) words of a * b for an odd constant a and uint32 values b (int64), with one int64
    product that cannot overflow: a * b = 2 q + b with q = b * (a >> 1) < 2**63."""
    q = b * (a >> 1)
    hi = (q + (b >> 1)) >> 31  # (2 X + bit) >> 32 == X >> 31 for X = q + (b >> 1) < 2**63
    lo = (((q & 0x7FFFFFFF) << 1) + b) & _MASK32
    return hi, lo


def philox_r0(counter: Tensor, seed: Tensor) -> Tensor:
    """philox_r0 (philox.h) for int64 counters and a 0-dim int64 seed: ``reference.philox_r0``'s
    words, with the first round's zero words folded away and half the products."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    hi_a, lo_a = _mulhilo(_ROUND_A, c0)  # round 1: c2 = c3 = 0, so pb = 0
    c0, c1, c2, c3 = c1 ^ k0, torch.zeros_like(c0), hi_a ^ k1, lo_a
    for _ in range(1, 10):
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
    return c0


def uniform(numel: int, noise: Tensor, device: torch.device, backward: bool = False) -> Tensor:
    """u_i of counter offset + i for i < numel, seed and offset read from ``noise``.

    ``backward``: the same numbers from a differently ordered sum, so that CSE cannot merge the
    backward's stream into the forward's, where the partitioner would save its results (a float
    per gate) instead of regenerating them from (seed, offset)."""
    seed, offset = noise[0], noise[1]
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    counter = offset + idx if backward else idx + offset  # wraps like uint64
    r0 = philox_r0(counter, seed)
    # int32(r0), folded: ~x for negative x, i.e. 2**32 - 1 - r0 for r0 >= 2**31
    folded = torch.where(r0 >= (1 << 31), 0xFFFFFFFF - r0, r0).to(torch.int32)
    return folded.to(_F32) * reference.UNIFORM_SCALE


# ---------------------------------------------------------------- sparsity_math.h, hc_sample
class _Params:
    """hc_params<float>: stretch formed in double, then every constant rounded to float32.
    beta is a 0-dim tensor so that ``/ beta`` stays a true division as in hc_sample: a Python-number
    divisor can be turned into a product with its reciprocal (ATen's CUDA kernel does), which
    rounds differently."""

    def __init__(self, beta: float, gamma: float, zeta: float, device: torch.device):
        self.beta = torch.tensor(beta, dtype=_F32, device=device)
        self.gamma = gamma
        self.stretch = zeta - gamma


def _sample(log_alpha: Tensor, u: Tensor, p: _Params) -> tuple[Tensor, Tensor]:
    """(z, dz/dlog_alpha) of hc_sample in float32."""
    u = torch.where(u < reference.EPS, reference.EPS, torch.where(u > 1.0 - reference.EPS, 1.0 - reference.EPS, u))
    s = _sigmoid((_log_positive(u) - _log_positive(1.0 - u) + log_alpha) / p.beta)
    s_bar = s * p.stretch + p.gamma
    inside = (s_bar > 0) & (s_bar < 1)
    z = torch.where(s_bar < 0, 0.0, torch.where(s_bar > 1, 1.0, s_bar))
    dz = torch.where(inside, p.stretch * s * (1.0 - s) / p.beta, 0.0)
    return z, dz


def _gates(log_alpha_rows: Tensor, noise: Tensor, beta: float, gamma: float, zeta: float, backward: bool):
    """Gates of a [rows, cols] float32 log_alpha, gate k = r * cols + c on counter offset + k."""
    p = _Params(beta, gamma, zeta, log_alpha_rows.device)
    u = uniform(log_alpha_rows.numel(), noise, log_alpha_rows.device, backward).reshape(log_alpha_rows.shape)
    return _sample(log_alpha_rows, u, p)


def _group_view(t: Tensor, groups: int) -> Tensor:
    return t.reshape(groups, t.numel() // groups) if groups else t.reshape(0, 0)


# ---------------------------------------------------------------- the ops (custom-op signatures)
def hard_concrete(log_alpha, noise, beta, gamma, zeta):
    z, _ = _gates(log_alpha.to(_F32).reshape(1, -1), noise, beta, gamma, zeta, False)
    return z.reshape(log_alpha.shape).to(log_alpha.dtype)


def hard_concrete_backward(grad, log_alpha, noise, beta, gamma, zeta):
    _, dz = _gates(log_alpha.to(_F32).reshape(1, -1), noise, beta, gamma, zeta, True)
    return grad.to(log_alpha.dtype).to(_F32) * dz.reshape(log_alpha.shape)


def gated_weight(weight, log_alpha, noise, beta, gamma, zeta):
    z, _ = _gates(log_alpha.to(_F32).reshape(1, -1), noise, beta, gamma, zeta, False)
    w = _group_view(weight.to(_F32), log_alpha.numel())
    return (w * z.reshape(-1, 1)).reshape(weight.shape).to(weight.dtype)


def gated_weight_backward(grad, weight, log_alpha, noise, beta, gamma, zeta):
    groups = log_alpha.numel()
    z, dz = _gates(log_alpha.to(_F32).reshape(1, -1), noise, beta, gamma, zeta, True)
    z, dz = z.reshape(-1, 1), dz.reshape(-1, 1)
    g = _group_view(grad.to(weight.dtype).to(_F32), groups)
    gw = g * _group_view(weight.to(_F32), groups)
    grad_w = (g * z).reshape(weight.shape).to(weight.dtype)
    if groups == weight.numel():  # a gate per weight: (g * w) * dz, no sum
        grad_la = gw * dz
    else:
        grad_la = gw.sum(1, keepdim=True) * dz
    return grad_w, grad_la.reshape(log_alpha.shape)


def _activation_gates(x, log_alpha, noise, beta, gamma, zeta, backward):
    batch, channels = x.shape[0], x.shape[1]
    la = log_alpha.to(_F32).reshape(1, channels).expand(batch, channels)
    z, dz = _gates(la, noise, beta, gamma, zeta, backward)
    tail = (1,) * (x.dim() - 2)
    return z.reshape(z.shape + tail), dz


def gated_activation(x, log_alpha, noise, beta, gamma, zeta):
    z, _ = _activation_gates(x, log_alpha, noise, beta, gamma, zeta, False)
    return (x.to(_F32) * z).to(x.dtype)


def gated_activation_backward(grad, x, log_alpha, noise, beta, gamma, zeta):
    z, dz = _activation_gates(x, log_alpha, noise, beta, gamma, zeta, True)
    xf, g = x.to(_F32), grad.to(x.dtype).to(_F32)
    grad_x = (g * z).to(x.dtype)
    per_gate = (g * xf).reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    if per_gate.shape[2] == 1:  # a gate per element: (g * x) * dz, summed over the batch
        grad_la = (per_gate[:, :, 0] * dz).sum(0)
    else:
        grad_la = (per_gate.sum(2) * dz).sum(0)
    return grad_x, grad_la.reshape(log_alpha.shape)


FORWARD = {"hard_concrete": hard_concrete, "gated_weight": gated_weight, "gated_activation": gated_activation}
BACKWARD = {"hard_concrete": hard_concrete_backward, "gated_weight": gated_weight_backward,
            "gated_activation": gated_activation_backward}
