"""The Triton kernels: one launch per forward and one per backward.

Two layouts:

* flat kernels walk the tensor as 1-D blocks (BLOCK_SIZE/num_warps by ``flat_config``);
* row kernels see the tensor as a [rows, inner] matrix (a row = the group that
  shares a threshold or a gate) in [BLOCK_R, BLOCK_C] tiles. A backward row
  kernel writes the gradient of the big tensor and, in the same pass, one
  partial sum per (row, column tile) to a buffer that a fixed-shape torch sum
  finishes. Reduction kernels use a tile shape and num_warps that depend only
  on the problem shape (``row_tile``), never on autotuning, so their results
  repeat bit for bit across runs and processes. No atomics anywhere.
"""
import triton
import triton.language as tl

from sparsekern.backends.triton import _math as m


# Flat kernels: (BLOCK_SIZE, num_warps) by a rule on the size, not by autotuning. An autotuner
# benchmarks its configs (with syncs) at every new key, and fails when that first happens
# inside a CUDA graph capture; a rule costs nothing and is capture-safe.
_SMALL_FLAT = 1 << 20


def flat_config(n: int) -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) of a flat kernel over n elements; a pure function of size_bucket(n)."""
    return (1024, 4) if size_bucket(n) <= _SMALL_FLAT else (4096, 8)


def size_bucket(n: int) -> int:
    """The power of two at or above n (1 for n <= 1): sizes that share a launch configuration."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def row_tile(rows: int, inner: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for a [rows, inner] problem; a pure function of the shape."""
    block_c = min(triton.next_power_of_2(max(inner, 1)), 1024)
    block_r = min(triton.next_power_of_2(max(rows, 1)), max(1, 4096 // block_c))
    return block_r, block_c, 8 if block_r * block_c >= 4096 else 4


L0_BLOCK = 4096  # fixed reduction block of l0_norm: partial sums have a fixed shape
L0_WARPS = 8


@triton.jit
def _flat_offsets(n, BLOCK_SIZE: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    return offs, offs < n


@triton.jit
def _noise(noise_ptr, seed, offset, NOISE_AT: tl.constexpr):
    """(seed, offset): the int arguments, or with NOISE_AT the int64 pair at noise_ptr (the
    layers' noise_state), read where the kernel runs: no host sync, and CUDA graph replays
    read the live counter. Philox takes the int64 bits as the uint64 of docs/math.md §4."""
    if NOISE_AT:
        seed = tl.load(noise_ptr)
        offset = tl.load(noise_ptr + 1)
    return seed, offset


@triton.jit
def _tile(rows, inner, n_col_tiles, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row ids, flat int64 offsets and mask of this program's [BLOCK_R, BLOCK_C] tile."""
    pid = tl.program_id(0)
    pid_r = pid // n_col_tiles
    pid_c = pid - pid_r * n_col_tiles
    r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = r[:, None] * inner + c[None, :]
    mask = (r < rows)[:, None] & (c < inner)[None, :]
    return r, offs, mask, pid_c


# ---------------------------------------------------------------- flat kernels
@triton.jit
def uniform_kernel(out_ptr, n, seed, offset, BLOCK_SIZE: tl.constexpr):
    offs, mask = _flat_offsets(n, BLOCK_SIZE)
    tl.store(out_ptr + offs, tl.rand(seed, offset + offs), mask=mask)


@triton.jit
def hard_concrete_kernel(la_ptr, grad_ptr, out_ptr, n, noise_ptr, seed, offset, beta, stretch, gamma,
                         EVAL: tl.constexpr, BACKWARD: tl.constexpr, NOISE_AT: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr):
    """Gate z (forward) or grad * dz/dlog_alpha (backward), sampled or eval."""
    offs, mask = _flat_offsets(n, BLOCK_SIZE)
    seed, offset = _noise(noise_ptr, seed, offset, NOISE_AT)
    la = tl.load(la_ptr + offs, mask=mask).to(tl.float32)
    if EVAL:
        z, dz = m.eval_gate(la, stretch, gamma)
    else:
        z, dz = m.hard_concrete_sample(la, seed, offset + offs, beta, stretch, gamma)
    if BACKWARD:
        g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, g * dz, mask=mask)
    else:
        tl.store(out_ptr + offs, m.cast_to(z, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_weight_kernel(w_ptr, la_ptr, grad_ptr, out_ptr, grad_la_ptr, n, noise_ptr, seed, offset, beta, stretch,
                        gamma, BACKWARD: tl.constexpr, NOISE_AT: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """One gate per weight: out = w * z, or grad_w = g * z and grad_la = g * w * dz together."""
    offs, mask = _flat_offsets(n, BLOCK_SIZE)
    seed, offset = _noise(noise_ptr, seed, offset, NOISE_AT)
    la = tl.load(la_ptr + offs, mask=mask).to(tl.float32)
    z, dz = m.hard_concrete_sample(la, seed, offset + offs, beta, stretch, gamma)
    w = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    if BACKWARD:
        g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, m.cast_to(g * z, out_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_la_ptr + offs, g * w * dz, mask=mask)
    else:
        tl.store(out_ptr + offs, m.cast_to(w * z, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _l0_prob(la_ptr, offs, mask, shift):
    la = tl.load(la_ptr + offs, mask=mask).to(tl.float32)
    return m.sigmoid(la - shift)


@triton.jit
def l0_partial_kernel(la_ptr, partial_ptr, n, shift, BLOCK_SIZE: tl.constexpr):
    """partial[pid] = sum of P(z != 0) over this block (fixed BLOCK_SIZE = L0_BLOCK)."""
    offs, mask = _flat_offsets(n, BLOCK_SIZE)
    p = tl.where(mask, _l0_prob(la_ptr, offs, mask, shift), 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(p, axis=0))


@triton.jit
def l0_backward_kernel(la_ptr, grad_ptr, out_ptr, n, shift, BLOCK_SIZE: tl.constexpr):
    offs, mask = _flat_offsets(n, BLOCK_SIZE)
    p = _l0_prob(la_ptr, offs, mask, shift)
    g = tl.load(grad_ptr).to(tl.float32)  # the scalar upstream gradient
    tl.store(out_ptr + offs, g * p * (1.0 - p), mask=mask)


# ---------------------------------------------------------------- row kernels
@triton.jit
def soft_threshold_kernel(w_ptr, s_ptr, grad_ptr, out_ptr, partial_ptr, rows, inner, n_col_tiles,
                          BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Forward: sign(w) * relu(|w| - t). Backward: grad_w = g * m and the row partial of
    sum(g * sign(w) * m) into partial[row, column tile]; m = |w| > t is recomputed."""
    r, offs, mask, pid_c = _tile(rows, inner, n_col_tiles, BLOCK_R, BLOCK_C)
    t = m.sigmoid(tl.load(s_ptr + r, mask=r < rows).to(tl.float32))[:, None]
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gm = tl.where(tl.abs(w) > t, g, 0.0)
        tl.store(out_ptr + offs, m.cast_to(gm, out_ptr.dtype.element_ty), mask=mask)
        row_sum = tl.sum(tl.where(w < 0.0, -gm, gm), axis=1)
        tl.store(partial_ptr + r * n_col_tiles + pid_c, row_sum, mask=r < rows)
    else:
        mag = tl.abs(w) - t
        mag = tl.where(mag < 0.0, 0.0, mag)  # keeps NaN, unlike tl.maximum
        tl.store(out_ptr + offs, m.cast_to(tl.where(w < 0.0, -mag, mag), out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_rows_kernel(x_ptr, la_ptr, grad_ptr, out_ptr, partial_ptr, rows, inner, n_col_tiles, channels,
                      noise_ptr, seed, offset, beta, stretch, gamma,
                      BACKWARD: tl.constexpr, NOISE_AT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One gate per row: row r uses log_alpha[r % channels] and noise counter offset + r.

    Serves gated_weight with per-row gates (channels = rows) and gated_activation
    (x as [B*C, spatial], channels = C: per-example gates). Forward: x * z.
    Backward: grad_x = g * z and partial[row, column tile] = dz * sum(g * x)."""
    r, offs, mask, pid_c = _tile(rows, inner, n_col_tiles, BLOCK_R, BLOCK_C)
    seed, offset = _noise(noise_ptr, seed, offset, NOISE_AT)
    la = tl.load(la_ptr + r % channels, mask=r < rows).to(tl.float32)
    z, dz = m.hard_concrete_sample(la, seed, offset + r, beta, stretch, gamma)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    if BACKWARD:
        g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, m.cast_to(g * z[:, None], out_ptr.dtype.element_ty), mask=mask)
        row_sum = tl.sum(tl.where(mask, g * x, 0.0), axis=1) * dz
        tl.store(partial_ptr + r * n_col_tiles + pid_c, row_sum, mask=r < rows)
    else:
        tl.store(out_ptr + offs, m.cast_to(x * z[:, None], out_ptr.dtype.element_ty), mask=mask)
