"""Module paths from before the layout of docs/architecture.md, kept importable: ``import
sparsekern.reference`` gives the module now at ``sparsekern.backends.reference`` (the same object)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old path -> new path. Not here: sparsekern.pruning.{sparsify,finalize,regularization}, whose names
# are the functions sparsekern.pruning exports (importing an alias would rebind them to modules).
MOVED = {
    "sparsekern._extension": "sparsekern.backends.extension",
    "sparsekern.compiled": "sparsekern.backends.compiled",
    "sparsekern.reference": "sparsekern.backends.reference",
    "sparsekern.triton": "sparsekern.backends.triton",
    "sparsekern.noise_ops": "sparsekern.ops.noise",
    "sparsekern.direct": "sparsekern.ops.fast_path",
    "sparsekern.inductor_decomps": "sparsekern.ops.inductor",
    "sparsekern.vision": "sparsekern.data.vision",
    "sparsekern.selftest": "sparsekern.cli.selftest",
    "sparsekern.pruning.trainer": "sparsekern.pruning.train.loop",
    "sparsekern.pruning.schedule": "sparsekern.pruning.control.schedule",
    "sparsekern.pruning.target": "sparsekern.pruning.control.target",
    "sparsekern.pruning.lambda_control": "sparsekern.pruning.control.lambda_control",
    "sparsekern.pruning.calibration": "sparsekern.pruning.control.calibration",
    "sparsekern.pruning.gmp": "sparsekern.pruning.control.gmp",
    "sparsekern.pruning.channel_gating": "sparsekern.pruning.surgery.channel_gating",
    "sparsekern.pruning.shrink": "sparsekern.pruning.surgery.shrink",
    "sparsekern.pruning.modules": "sparsekern.pruning.surgery.modules",
    "sparsekern.pruning.flops": "sparsekern.pruning.surgery.flops",
    "sparsekern.pruning.report": "sparsekern.pruning.surgery.report",
    "sparsekern.pruning.checkpoint": "sparsekern.pruning.train.checkpoint",
    "sparsekern.pruning.runlock": "sparsekern.pruning.train.runlock",
    "sparsekern.pruning.batches": "sparsekern.pruning.train.batches",
    "sparsekern.pruning.ema": "sparsekern.pruning.train.ema",
    "sparsekern.pruning.optim": "sparsekern.pruning.methods.optim",
    "sparsekern.pruning.batchnorm": "sparsekern.pruning.train.batchnorm",
    "sparsekern.pruning.recipes": "sparsekern.pruning.methods.recipes",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        return importlib.util.spec_from_loader(name, _Alias(new)) if new else None


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
