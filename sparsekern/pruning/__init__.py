"""Pruning pipeline: sparsify a model, train it with penalties/controllers, report, export.

``sparsify`` -> ``param_groups`` -> train (``regularization`` for L0, ``TargetSparsity`` for
STR, ``GMP`` for the baseline) -> ``sparsity_report`` / ``format_report`` -> ``finalize``
(``shrink_model`` for gated built-in models). ``pruning.methods`` bundles each method's pieces.
The training loop and checkpoints live in ``trainer`` / ``checkpoint`` (imported on demand).
"""
from sparsekern.pruning.batchnorm import recalibrate_bn
from sparsekern.pruning.finalize import finalize
from sparsekern.pruning.flops import record_flops_per_weight
from sparsekern.pruning.gmp import GMP
from sparsekern.pruning.modules import gate_modules, global_sparsity, sparse_modules
from sparsekern.pruning.optim import param_groups
from sparsekern.pruning.regularization import regularization
from sparsekern.pruning.report import format_report, sparsity_report
from sparsekern.pruning.schedule import cubic_sparsity
from sparsekern.pruning.sparsify import sparsify
from sparsekern.pruning.shrink import model_widths, shrink_model
from sparsekern.pruning.target import TargetSparsity

__all__ = [
    "model_widths", "recalibrate_bn", "shrink_model",
    "GMP", "TargetSparsity", "cubic_sparsity", "finalize", "format_report", "gate_modules", "global_sparsity",
    "param_groups", "record_flops_per_weight", "regularization", "sparse_modules", "sparsify", "sparsity_report",
]
