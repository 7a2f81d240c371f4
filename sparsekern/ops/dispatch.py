"""Which backend's kernels run for a call, and the dtypes their gradients come back in."""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern import backends
from sparsekern.ops import fast_path

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # the hard-concrete stretch (docs/math.md §2)

# gate-sampling op -> its data tensors (log_alpha last), in argument order
GATE_DATA_ARGS = {
    "hard_concrete": ("log_alpha",),
    "gated_weight": ("weight", "log_alpha"),
    "gated_activation": ("x", "log_alpha"),
}


def backend_name(*tensors: Tensor) -> str:
    """The backend for these tensors: the first one's device and dtype (float64 if any is)."""
    dtype = tensors[0].dtype
    for x in tensors:
        if x.dtype == torch.float64:
            dtype = torch.float64
    return backends.resolve_name(tensors[0].device, dtype)


def kernels(*tensors: Tensor):
    return backends.module(backend_name(*tensors))


def fast(*tensors: Tensor) -> bool:
    """Eager call on a compiled backend: straight to torch.ops.sparsekern_C (see ``fast_path``)."""
    return fast_path.eligible(*tensors) and backend_name(*tensors) in fast_path.BACKENDS


def param_grad_dtype(param: Tensor) -> torch.dtype:
    """The kernels accumulate a parameter's gradient in float32 (float64 for float64)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32
