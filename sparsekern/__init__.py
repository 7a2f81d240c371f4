"""sparsekern: fused kernels and PyTorch ops for learnable network sparsification."""
from sparsekern import _extension  # noqa: F401  (loads compiled kernels, warns if missing)
from sparsekern.backends import available_backends, current_backend, use_backend
from sparsekern.ops import (
    gated_activation,
    gated_weight,
    hard_concrete,
    hard_concrete_eval,
    l0_norm,
    soft_threshold,
    uniform,
)

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "current_backend",
    "gated_activation",
    "gated_weight",
    "hard_concrete",
    "hard_concrete_eval",
    "l0_norm",
    "soft_threshold",
    "uniform",
    "use_backend",
]
