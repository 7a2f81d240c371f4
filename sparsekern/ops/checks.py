"""Argument checks of the public ops: one-line errors that name the op and the argument."""
from __future__ import annotations

import math

import torch
from torch import Tensor

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_U64 = 1 << 64
_I64_END = 1 << 63


def check_float(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_same_device(op: str, first: tuple[str, Tensor], other: tuple[str, Tensor]) -> None:
    if first[1].device != other[1].device:
        raise ValueError(
            f"{op}: {other[0]} is on {other[1].device} but {first[0]} is on {first[1].device}; "
            "move them to the same device"
        )


def check_rows(op: str, name: str, param: Tensor, tensor_name: str, t: Tensor, allow_full: bool = False) -> None:
    n = param.numel()
    if n == 1 or (t.dim() > 0 and n == t.shape[0]) or (allow_full and param.shape == t.shape):
        return
    rows = t.shape[0] if t.dim() > 0 else 1
    full = f" or {tensor_name}'s shape {tuple(t.shape)}" if allow_full else ""
    raise ValueError(
        f"{op}: {name} must have 1 element or {tensor_name}.shape[0] = {rows} elements{full}; "
        f"got shape {tuple(param.shape)}"
    )


def check_hc(op: str, beta: float, gamma: float, zeta: float) -> None:
    for name, v in (("beta", beta), ("gamma", gamma), ("zeta", zeta)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{op}: {name} must be a finite number, got {v!r}")
    if beta <= 0:
        raise ValueError(f"{op}: beta must be > 0, got {beta}")
    if not gamma < 0 < 1 < zeta:
        raise ValueError(f"{op}: need gamma < 0 and zeta > 1 (the stretch interval), got gamma={gamma}, zeta={zeta}")


def u64(op: str, name: str, v) -> int:
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


def unsigned(v: int) -> int:
    """The uint64 value of an int64 seed/offset (the inverse of ``u64``'s mapping)."""
    return v + _U64 if v < 0 else v


def check_noise(op: str, noise: Tensor, offset, data: tuple[str, Tensor]) -> Tensor:
    """A noise-state tensor passed as ``seed``: int64 ``[seed, offset]`` (see ``sparsekern.ops.noise``)."""
    if noise.dtype != torch.int64 or noise.shape != (2,):
        raise TypeError(f"{op}: seed must be an int, or an int64 noise tensor of shape (2,) holding (seed, offset); "
                        f"got a {noise.dtype} tensor of shape {tuple(noise.shape)}")
    check_same_device(op, data, ("the noise tensor (seed)", noise))  # the kernels read it where they run
    if not (isinstance(offset, int) and offset == 0):
        raise ValueError(f"{op}: offset must be left out when seed is a noise tensor (it holds the offset)")
    return noise
