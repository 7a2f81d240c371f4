"""The public ops: checks, then the fastest path that is valid for the call (table in ``sparsekern.ops``)."""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern import backends
from sparsekern.ops import custom_ops, fast_path, inductor, noise
from sparsekern.ops.checks import check_float, check_hc, check_noise, check_rows, check_same_device, u64
from sparsekern.ops.dispatch import BETA, GAMMA, ZETA, fast


def _sample(op: str, tensors: tuple[Tensor, ...], first: str, seed, offset, hc: tuple) -> Tensor:
    """The sampling ops after their checks: a noise tensor goes to the ``<op>_at`` op, int (seed,
    offset) to the eager fast path or the custom op. ``tensors``: the data (log_alpha last), the
    first of them named ``first`` in errors."""
    if isinstance(seed, Tensor):
        if torch.compiler.is_compiling() and inductor.lowering_choice() is not None:
            pass  # dynamo guards on what a traced branch reads: a new set_inductor_gates choice recompiles
        return noise.OPS[op](*tensors, check_noise(op, seed, offset, (first, tensors[0])), *hc)
    seed, offset = u64(op, "seed", seed), u64(op, "offset", offset)
    if fast(*tensors):
        return fast_path.OPS[op](*tensors, seed, offset, *hc)
    return getattr(custom_ops, op)(*tensors, seed, offset, *hc)


def soft_threshold(weight: Tensor, s: Tensor) -> Tensor:
    """STR weight: ``sign(w) * relu(|w| - sigmoid(s))``; ``s`` per tensor (1 element) or per row."""
    op = "soft_threshold"
    check_float(op, "weight", weight)
    check_float(op, "s", s)
    check_same_device(op, ("weight", weight), ("s", s))
    check_rows(op, "s", s, "weight", weight)
    order = _memory_order(weight, per_row=s.numel() != 1)
    if order is not None:  # e.g. channels-last: compute on the dense view, return in the weight's format
        return soft_threshold(weight.permute(order), s).permute(_inverse(order))
    if fast(weight, s):
        return fast_path.OPS[op](weight, s)
    return custom_ops.soft_threshold(weight, s)


def _memory_order(t: Tensor, per_row: bool) -> list[int] | None:
    """The dim order in which a non-contiguous but dense ``t`` (channels-last, a transpose) is laid
    out, so that ``t.permute(order)`` is contiguous; None when there is none to use. The kernels run
    row-major with one threshold per row of dim 0, so per-row ``s`` needs dim 0 outermost (it is in
    channels-last). Elementwise torch ops keep such a layout; so does soft_threshold (issue 22)."""
    if t.dim() < 2 or t.is_contiguous():
        return None
    order = sorted(range(t.dim()), key=lambda d: (t.shape[d] == 1, -t.stride(d), d))
    if not t.permute(order).is_contiguous() or (per_row and order[0] != 0):
        return None  # not dense (a slice): the kernels' contiguous copy, as before
    return order


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return inverse


def hard_concrete(log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                  gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """A training sample z of hard-concrete gates; noise index i uses counter ``offset + i`` (docs/math.md §4).

    ``seed`` may instead be an int64 tensor ``[seed, offset]`` (a module's noise state): same
    numbers, and ``torch.compile`` treats the counter as data instead of a guarded constant.
    """
    op = "hard_concrete"
    check_float(op, "log_alpha", log_alpha)
    check_hc(op, beta, gamma, zeta)
    return _sample(op, (log_alpha,), "log_alpha", seed, offset, (beta, gamma, zeta))


def hard_concrete_eval(log_alpha: Tensor, *, gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """Deterministic (eval-mode) gate ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``."""
    op = "hard_concrete_eval"
    check_float(op, "log_alpha", log_alpha)
    check_hc(op, BETA, gamma, zeta)
    if fast(log_alpha):
        return fast_path.OPS[op](log_alpha, gamma, zeta)
    return custom_ops.hard_concrete_eval(log_alpha, gamma, zeta)


def l0_norm(log_alpha: Tensor, *, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """Expected number of non-zero gates: ``sum sigmoid(log_alpha - beta * log(-gamma / zeta))``."""
    op = "l0_norm"
    check_float(op, "log_alpha", log_alpha)
    check_hc(op, beta, gamma, zeta)
    if fast(log_alpha):
        return fast_path.OPS[op](log_alpha, beta, gamma, zeta)
    return custom_ops.l0_norm(log_alpha, beta, gamma, zeta)


def gated_weight(weight: Tensor, log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                 gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """``weight * z`` with z sampled from ``log_alpha`` (weight's shape, or one gate per row).

    ``seed``: an int, or an int64 noise tensor ``[seed, offset]`` as in ``hard_concrete``."""
    op = "gated_weight"
    check_float(op, "weight", weight)
    check_float(op, "log_alpha", log_alpha)
    check_same_device(op, ("weight", weight), ("log_alpha", log_alpha))
    check_rows(op, "log_alpha", log_alpha, "weight", weight, allow_full=True)
    check_hc(op, beta, gamma, zeta)
    return _sample(op, (weight, log_alpha), "weight", seed, offset, (beta, gamma, zeta))


def gated_activation(x: Tensor, log_alpha: Tensor, seed: int | Tensor, offset: int = 0, *, beta: float = BETA,
                     gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """``x * z`` for x of shape [B, C, ...]; z [B, C] sampled per example, RNG index ``b * C + c``.

    ``seed``: an int, or an int64 noise tensor ``[seed, offset]`` as in ``hard_concrete``."""
    op = "gated_activation"
    check_float(op, "x", x)
    check_float(op, "log_alpha", log_alpha)
    check_same_device(op, ("x", x), ("log_alpha", log_alpha))
    if x.dim() < 2:
        raise ValueError(f"gated_activation: x must have shape [B, C, ...], got {tuple(x.shape)}")
    if log_alpha.numel() != x.shape[1]:
        raise ValueError(
            f"gated_activation: log_alpha must have x.shape[1] = {x.shape[1]} elements, got shape "
            f"{tuple(log_alpha.shape)}"
        )
    check_hc(op, beta, gamma, zeta)
    return _sample(op, (x, log_alpha), "x", seed, offset, (beta, gamma, zeta))


def uniform(numel: int, seed: int, offset: int = 0, *, device: torch.device | str = "cpu") -> Tensor:
    """The uniform stream of docs/math.md §4, u_i = U(Philox(seed, offset + i)), i < numel, as float32."""
    op = "uniform"
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"uniform: numel must be a non-negative int, got {numel!r}")
    seed, offset = u64(op, "seed", seed), u64(op, "offset", offset)
    device = device if type(device) is torch.device else torch.device(device)
    if fast_path.eligible():  # no autograd: any backend's kernel may run without the custom op
        backend = backends.resolve_name(device)
        if backend == "cpu":
            return fast_path.uniform_cpu(numel, seed, offset)
        if backend in fast_path.BACKENDS:
            return fast_path.uniform(numel, seed, offset, device)
        return custom_ops.uniform_kernel(numel, seed, offset, device)
    return custom_ops.uniform(numel, seed, offset, device)
