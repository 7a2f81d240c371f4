"""Loads the compiled kernels (``sparsekern._C``), which register ``torch.ops.sparsekern_C``.

If the extension is missing or broken, sparsekern still imports and runs on the
``torch`` backend; one warning says why.
"""
from __future__ import annotations

import warnings

import torch

LOAD_ERROR: Exception | None = None
try:
    from sparsekern import _C  # noqa: F401  (import registers the ops)
except Exception as exc:  # ImportError, or an OSError/undefined symbol from a stale build
    LOAD_ERROR = exc
    warnings.warn(
        f"sparsekern: compiled kernels unavailable ({type(exc).__name__}: {exc}); "
        "falling back to the pure-PyTorch 'torch' backend. Rebuild with "
        "`pip install --no-build-isolation .` to get the 'cpu'/'cuda' backends.",
        RuntimeWarning,
        stacklevel=2,
    )


def compiled_available() -> bool:
    return LOAD_ERROR is None


def compiled_has(dispatch_key: str) -> bool:
    """Whether the compiled library registered kernels for this dispatch key ("CPU", "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern_C::soft_threshold", dispatch_key)

