"""Pruning pipeline: sparsify a model, train it with penalties/controllers, report, export.

``sparsify`` -> ``param_groups`` -> train (``regularization`` for L0, ``TargetSparsity`` for
STR, ``GMP`` for the baseline) -> ``sparsity_report`` / ``format_report`` -> ``finalize``
(``shrink_model`` for gated built-in models; ``save_shrunk_pretrained`` for a shrunk Hugging
Face model, ``save_shrunk`` / ``load_shrunk`` for one of the user's own class).
``pruning.methods`` bundles each method's pieces.
The training loop and checkpoints live in ``trainer`` / ``checkpoint`` (imported on demand).
"""
from sparsekern.pruning.train.batchnorm import recalibrate_bn
from sparsekern.pruning.control.calibration import calibrate_gates
from sparsekern.pruning.train.ema import ParameterEMA
from sparsekern.pruning.surgery.export.hf_pretrained import save_shrunk_pretrained
from sparsekern.pruning.surgery.export.shrunk_file import load_shrunk, save_shrunk
from sparsekern.pruning.surgery.finalize import finalize
from sparsekern.pruning.surgery.flops import record_flops_per_weight
from sparsekern.pruning.control.gmp import GMP
from sparsekern.pruning.control.lambda_control import TargetLambda
from sparsekern.pruning.surgery.modules import gate_modules, global_sparsity, sparse_modules
from sparsekern.pruning.methods.optim import param_groups
from sparsekern.pruning.defaults import L0_DROP_RATE, L0_GATE_LR, L0_LAMBDA, make_optimizers
from sparsekern.pruning.control.regularization import regularization
from sparsekern.pruning.surgery.report import format_report, sparsity_report
from sparsekern.pruning.control.schedule import cubic_sparsity
from sparsekern.pruning.surgery.sparsify import sparsify
from sparsekern.pruning.surgery.shrink import model_widths, shrink_model
from sparsekern.pruning.control.target import TargetSparsity

__all__ = [
    "GMP", "L0_DROP_RATE", "ParameterEMA", "L0_GATE_LR", "L0_LAMBDA", "TargetLambda", "TargetSparsity",
    "calibrate_gates", "cubic_sparsity", "finalize", "load_shrunk",
    "format_report", "gate_modules", "global_sparsity", "make_optimizers", "model_widths", "param_groups",
    "recalibrate_bn", "record_flops_per_weight", "regularization", "save_shrunk", "save_shrunk_pretrained",
    "shrink_model",
    "sparse_modules", "sparsify", "sparsity_report",
]
