"""sparsekern: fused kernels and PyTorch ops for learnable network sparsification."""
from sparsekern import _moved
from sparsekern.backends import available_backends, current_backend, use_backend  # loads the compiled kernels
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
_moved.install()  # the module paths of earlier releases still import

# The model layer is imported on first use, so `import sparsekern` stays light.
_PRUNING = ("GMP", "L0_DROP_RATE", "L0_GATE_LR", "L0_LAMBDA", "ParameterEMA", "TargetLambda", "TargetSparsity",
            "calibrate_gates", "finalize",
            "format_report", "global_sparsity", "load_shrunk", "make_optimizers", "model_widths", "param_groups",
            "recalibrate_bn", "regularization", "save_shrunk", "save_shrunk_pretrained", "shrink_model",
            "sparse_modules", "sparsify", "sparsity_report")
_SUBMODULES = ("nn", "pruning", "reference", "backends", "ops", "selftest")


def __getattr__(name: str):
    import importlib

    if name in _PRUNING:
        return getattr(importlib.import_module("sparsekern.pruning"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"sparsekern.{name}")
    raise AttributeError(f"module 'sparsekern' has no attribute {name!r}")


__all__ = list(_PRUNING) + [
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
