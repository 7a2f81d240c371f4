"""The Triton kernels as ``torch.ops.sparsekern_triton.*`` ops.

On a GPU they are ``torch.library.triton_op``s launching through ``wrap_triton``,
so ``torch.compile`` traces into the kernels. Under TRITON_INTERPRET they are
opaque custom ops (torch cannot trace interpreted kernels). Seeds/offsets are
int64 (two's complement of docs/math.md's uint64); the kernels sign-extend them
back to the same 64 bits. The Python in each op only allocates outputs and
finishes the row reductions with a fixed-shape torch sum over the kernels'
partial-sum buffer.
"""
from __future__ import annotations

import math

import torch
import triton
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from sparsekern.backends.triton import kernels as k
from sparsekern.backends.triton._math import INTERPRETED

HAS_TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
F32 = torch.float32


def _op(name: str, mutates_args=()):
    """triton_op on GPUs: torch.compile sees the kernels. Interpreted, an opaque custom op
    whose fake kernel is the function itself (its launches skip fake tensors)."""
    if HAS_TRITON_OP and not INTERPRETED:
        return torch.library.triton_op(f"sparsekern_triton::{name}", mutates_args=mutates_args)

    def register(fn):
        op = torch.library.custom_op(f"sparsekern_triton::{name}", fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op

    return register


def _launch(kernel):
    if INTERPRETED:
        return _InterpretedLaunch(kernel)
    return torch.library.wrap_triton(kernel) if HAS_TRITON_OP else kernel


class _InterpretedLaunch:
    """Launches an interpreted kernel eagerly, and skips it on fake/meta tensors.

    torch's wrap_triton passes interpreted kernels through unwrapped, so shape
    tracing (fake tensors: opcheck, torch.compile on CPU) would run the
    interpreter on tensors without data. Outputs are allocated outside the kernel,
    so skipping the launch leaves every shape right.
    """

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, Tensor)]
            if any(t.device.type == "meta" or is_fake(t) for t in tensors):
                return
            self.kernel[grid](*args, **kwargs)

        return launch


def _flat(kernel, n: int, *args, **consts) -> None:
    if n > 0:
        block, warps = k.flat_config(n)
        _launch(kernel)[(triton.cdiv(n, block),)](*args, **consts, BLOCK_SIZE=block, num_warps=warps)


def _noise_args(noise: Tensor | None, seed: int, offset: int, placeholder: Tensor) -> tuple[tuple, bool]:
    """(noise_ptr, seed, offset) kernel arguments and NOISE_AT: the kernel reads the noise tensor
    itself when there is one. placeholder (never read) must be an input, not an output: the
    interpreter copies every tensor argument back after the launch, and an output passed twice
    would be overwritten by its unwritten copy."""
    if noise is None:
        return (placeholder, seed, offset), False
    return (noise, 0, 0), True


def _rows(kernel, x: Tensor, param: Tensor, grad: Tensor | None, rows: int, *extra, **consts) -> tuple[Tensor, Tensor]:
    """Run a row kernel on x seen as [rows, inner]: (output, partial sums [rows, column tiles])."""
    inner = x.numel() // rows if rows else 0
    block_r, block_c, warps = k.row_tile(rows, inner)
    n_col = triton.cdiv(inner, block_c)
    out = torch.empty_like(x)
    backward = grad is not None
    partial = torch.empty((rows, n_col), dtype=F32, device=x.device) if backward else out
    n_programs = triton.cdiv(rows, block_r) * n_col
    if n_programs > 0:
        _launch(kernel)[(n_programs,)](
            x, param, grad if backward else x, out, partial, rows, inner, n_col, *extra,
            BACKWARD=backward, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps, **consts,
        )
    return out, partial


# ---------------------------------------------------------------- soft threshold
def _groups(weight: Tensor, s: Tensor) -> int:
    return 1 if s.numel() == 1 else weight.shape[0]


@_op("soft_threshold")
def soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    return _rows(k.soft_threshold_kernel, weight, s, None, _groups(weight, s))[0]


@_op("soft_threshold_backward")
def soft_threshold_backward(grad: Tensor, weight: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    grad_w, partial = _rows(k.soft_threshold_kernel, weight, s, grad, _groups(weight, s))
    sig = torch.sigmoid(s.to(F32).reshape(-1))
    grad_s = -sig * (1 - sig) * partial.sum(1)
    return grad_w, grad_s.reshape(s.shape)


# ---------------------------------------------------------------- hard-concrete gates
# The gate ops come twice: with (seed, offset) ints, and as ``<op>_at`` with the noise tensor
# [seed, offset] (int64) that the kernel reads itself (sparsekern.ops.noise: no host read).
def _gates(grad, log_alpha, seed, offset, beta, gamma, zeta, eval_gate: bool, noise: Tensor | None = None) -> Tensor:
    out = torch.empty(log_alpha.shape, dtype=F32 if grad is not None else log_alpha.dtype, device=log_alpha.device)
    n = log_alpha.numel()
    noise_args, at = _noise_args(noise, seed, offset, log_alpha)
    _flat(k.hard_concrete_kernel, n, log_alpha, log_alpha if grad is None else grad, out, n, *noise_args,
          beta, zeta - gamma, gamma, EVAL=eval_gate, BACKWARD=grad is not None, NOISE_AT=at)
    return out


@_op("hard_concrete")
def hard_concrete(log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float, zeta: float) -> Tensor:
    return _gates(None, log_alpha, seed, offset, beta, gamma, zeta, eval_gate=False)


@_op("hard_concrete_backward")
def hard_concrete_backward(grad: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float,
                           zeta: float) -> Tensor:
    return _gates(grad, log_alpha, seed, offset, beta, gamma, zeta, eval_gate=False)


@_op("hard_concrete_at")
def hard_concrete_at(log_alpha: Tensor, noise: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    return _gates(None, log_alpha, 0, 0, beta, gamma, zeta, eval_gate=False, noise=noise)


@_op("hard_concrete_at_backward")
def hard_concrete_at_backward(grad: Tensor, log_alpha: Tensor, noise: Tensor, beta: float, gamma: float,
                              zeta: float) -> Tensor:
    return _gates(grad, log_alpha, 0, 0, beta, gamma, zeta, eval_gate=False, noise=noise)


@_op("hard_concrete_eval")
def hard_concrete_eval(log_alpha: Tensor, gamma: float, zeta: float) -> Tensor:
    return _gates(None, log_alpha, 0, 0, 1.0, gamma, zeta, eval_gate=True)


@_op("hard_concrete_eval_backward")
def hard_concrete_eval_backward(grad: Tensor, log_alpha: Tensor, gamma: float, zeta: float) -> Tensor:
    return _gates(grad, log_alpha, 0, 0, 1.0, gamma, zeta, eval_gate=True)


# ---------------------------------------------------------------- expected L0
def _l0_shift(beta: float, gamma: float, zeta: float) -> float:
    return beta * math.log(-gamma / zeta)


@_op("l0_norm")
def l0_norm(log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    n = log_alpha.numel()
    partial = torch.zeros(triton.cdiv(n, k.L0_BLOCK), dtype=F32, device=log_alpha.device)
    if n > 0:
        _launch(k.l0_partial_kernel)[(partial.numel(),)](
            log_alpha, partial, n, _l0_shift(beta, gamma, zeta), BLOCK_SIZE=k.L0_BLOCK, num_warps=k.L0_WARPS
        )
    return partial.sum().to(log_alpha.dtype)


@_op("l0_norm_backward")
def l0_norm_backward(grad: Tensor, log_alpha: Tensor, beta: float, gamma: float, zeta: float) -> Tensor:
    out = torch.empty(log_alpha.shape, dtype=F32, device=log_alpha.device)
    n = log_alpha.numel()
    _flat(k.l0_backward_kernel, n, log_alpha, grad, out, n, _l0_shift(beta, gamma, zeta))
    return out


# ---------------------------------------------------------------- gated weight / activation
def _gated_weight(grad, weight, log_alpha, seed, offset, beta, gamma, zeta, noise=None):
    """(out or grad_w, grad_la or None): one gate per weight (flat) or per row."""
    if log_alpha.numel() != weight.numel():
        rows = log_alpha.numel()
        noise_args, at = _noise_args(noise, seed, offset, weight)
        out, partial = _rows(k.gated_rows_kernel, weight, log_alpha, grad, rows, rows, *noise_args,
                             beta, zeta - gamma, gamma, NOISE_AT=at)
        return out, (partial.sum(1).reshape(log_alpha.shape) if grad is not None else None)
    out = torch.empty_like(weight)
    grad_la = torch.empty(log_alpha.shape, dtype=F32, device=weight.device) if grad is not None else out
    n = weight.numel()
    noise_args, at = _noise_args(noise, seed, offset, weight)
    _flat(k.gated_weight_kernel, n, weight, log_alpha, weight if grad is None else grad, out, grad_la, n, *noise_args,
          beta, zeta - gamma, gamma, BACKWARD=grad is not None, NOISE_AT=at)
    return out, grad_la


@_op("gated_weight")
def gated_weight(weight: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float,
                 zeta: float) -> Tensor:
    return _gated_weight(None, weight, log_alpha, seed, offset, beta, gamma, zeta)[0]


@_op("gated_weight_backward")
def gated_weight_backward(grad: Tensor, weight: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float,
                          gamma: float, zeta: float) -> tuple[Tensor, Tensor]:
    return _gated_weight(grad, weight, log_alpha, seed, offset, beta, gamma, zeta)


@_op("gated_weight_at")
def gated_weight_at(weight: Tensor, log_alpha: Tensor, noise: Tensor, beta: float, gamma: float,
                    zeta: float) -> Tensor:
    return _gated_weight(None, weight, log_alpha, 0, 0, beta, gamma, zeta, noise)[0]


@_op("gated_weight_at_backward")
def gated_weight_at_backward(grad: Tensor, weight: Tensor, log_alpha: Tensor, noise: Tensor, beta: float,
                             gamma: float, zeta: float) -> tuple[Tensor, Tensor]:
    return _gated_weight(grad, weight, log_alpha, 0, 0, beta, gamma, zeta, noise)


def _gated_activation(grad, x, log_alpha, seed, offset, beta, gamma, zeta, noise=None):
    batch, channels = x.shape[0], x.shape[1]
    noise_args, at = _noise_args(noise, seed, offset, x)
    out, partial = _rows(k.gated_rows_kernel, x, log_alpha, grad, batch * channels, channels, *noise_args,
                         beta, zeta - gamma, gamma, NOISE_AT=at)
    if grad is None:
        return out, None
    return out, partial.sum(1).reshape(batch, channels).sum(0).reshape(log_alpha.shape)


@_op("gated_activation")
def gated_activation(x: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float, gamma: float,
                     zeta: float) -> Tensor:
    return _gated_activation(None, x, log_alpha, seed, offset, beta, gamma, zeta)[0]


@_op("gated_activation_backward")
def gated_activation_backward(grad: Tensor, x: Tensor, log_alpha: Tensor, seed: int, offset: int, beta: float,
                              gamma: float, zeta: float) -> tuple[Tensor, Tensor]:
    return _gated_activation(grad, x, log_alpha, seed, offset, beta, gamma, zeta)


@_op("gated_activation_at")
def gated_activation_at(x: Tensor, log_alpha: Tensor, noise: Tensor, beta: float, gamma: float,
                        zeta: float) -> Tensor:
    return _gated_activation(None, x, log_alpha, 0, 0, beta, gamma, zeta, noise)[0]


@_op("gated_activation_at_backward")
def gated_activation_at_backward(grad: Tensor, x: Tensor, log_alpha: Tensor, noise: Tensor, beta: float,
                                 gamma: float, zeta: float) -> tuple[Tensor, Tensor]:
    return _gated_activation(grad, x, log_alpha, 0, 0, beta, gamma, zeta, noise)


# ---------------------------------------------------------------- the random stream
@_op("uniform_", mutates_args={"out"})
def uniform_(out: Tensor, seed: int, offset: int) -> None:
    n = out.numel()
    _flat(k.uniform_kernel, n, out, n, seed, offset)
