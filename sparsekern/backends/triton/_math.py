"""Scalar math shared by the Triton kernels, written as @triton.jit helpers.

The formulas follow the same operation order as csrc/include/sparsekern/*_math.h
so the CUDA and Triton gates can agree bit for bit: exp/log are the CUDA
libdevice functions (what nvcc's expf/logf are), divisions are IEEE (div_rn),
and the one multiply-add of the gate math is an explicit fma, as nvcc emits it.
The interpreter has no libdevice, so it uses tl.exp/tl.log (numpy).
"""
import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
EPS = tl.constexpr(1e-6)
ONE_MINUS_EPS = tl.constexpr(1.0 - 1e-6)

try:
    from triton.language.extra import libdevice
except ImportError:  # very old triton: fall back to the fast intrinsics
    libdevice = None

if INTERPRETED or libdevice is None:

    @triton.jit
    def exp(x):
        return tl.exp(x)

    @triton.jit
    def log(x):
        return tl.log(x)

else:

    @triton.jit
    def exp(x):
        return libdevice.exp(x)

    @triton.jit
    def log(x):
        return libdevice.log(x)


@triton.jit
def sigmoid(x):
    return tl.math.div_rn(1.0, 1.0 + exp(-x))


@triton.jit
def stretched_gate(s, scale, stretch, gamma):
    """(z, dz/d log_alpha) of a gate from its sigmoid s: z = clamp(s*stretch + gamma, 0, 1).

    scale is 1/beta's role in d/dlog_alpha (1/beta for samples, 1 for eval gates).
    """
    s_bar = tl.fma(s, stretch, gamma)  # explicit: nvcc contracts it (default -fmad=true), Triton's default may not
    z = tl.where(s_bar < 0.0, 0.0, tl.where(s_bar > 1.0, 1.0, s_bar))  # keeps NaN, unlike min/max
    inside = (s_bar > 0.0) & (s_bar < 1.0)
    dz = tl.where(inside, tl.math.div_rn(stretch * s * (1.0 - s), scale), 0.0)
    return z, dz


@triton.jit
def hard_concrete_sample(log_alpha, seed, counter, beta, stretch, gamma):
    """docs/math.md §2 training sample with noise u = tl.rand(seed, counter) (== docs/math.md §4's u)."""
    u = tl.rand(seed, counter)
    u = tl.minimum(tl.maximum(u, EPS), ONE_MINUS_EPS)
    s = sigmoid(tl.math.div_rn(log(u) - log(1.0 - u) + log_alpha, beta))
    return stretched_gate(s, beta, stretch, gamma)


@triton.jit
def eval_gate(log_alpha, stretch, gamma):
    return stretched_gate(sigmoid(log_alpha), 1.0, stretch, gamma)


# The interpreter (triton <= 3.9) truncates float32 -> bfloat16 instead of rounding to
# nearest even like the GPU does; round the bits by hand there so both agree with torch.
_ROUND_BF16_BY_HAND = tl.constexpr(INTERPRETED)


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """x (float32) in the output dtype, rounded to nearest even."""
    if _ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)
