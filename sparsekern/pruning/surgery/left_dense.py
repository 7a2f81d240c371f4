"""What a sparsified model left dense, and why (the report lists it next to the sparse layers)."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from sparsekern.nn import GateGenerator, HardConcreteGates, SparseModule
from sparsekern.nn.attention import INPUT_PROJECTIONS
from sparsekern.nn.conv1d import is_conv1d
from sparsekern.pruning.surgery.modules import tied_weights

_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _reason(name: str, module: nn.Module, tied: dict[str, list[str]]) -> str:
    if name in tied:
        return f"tied to {', '.join(tied[name])}"
    if isinstance(module, nn.MultiheadAttention):
        dense = [p for p in INPUT_PROJECTIONS.values() if module._parameters.get(p) is not None]
        if dense:
            return f"{', '.join(dense)}: not selected (include / exclude / keep_first / keep_last)"
        return "in_proj_bias: the input projections' bias (biases stay dense)"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORMS):
        return "normalization"
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_conv1d(module):
        return "not selected (include / exclude / keep_first / keep_last)"
    return f"{type(module).__name__} is not a layer type sparsify swaps"


def left_dense(model: nn.Module) -> list[dict]:
    """``[{name, type, params, reason}]`` for every module holding parameters of its own that is not
    sparse, in a model that has sparse layers or gates (empty for a dense model)."""
    modules = list(model.named_modules())
    if not any(isinstance(m, (SparseModule, HardConcreteGates)) for _, m in modules):
        return []
    generators = {id(p) for _, m in modules if isinstance(m, GateGenerator) for p in m.modules()}
    tied = tied_weights(model)
    rows = []
    for name, module in modules:
        own = list(module.parameters(recurse=False))
        if not own or isinstance(module, (SparseModule, HardConcreteGates)) or id(module) in generators:
            continue
        rows.append({"name": name, "type": type(module).__name__, "params": sum(p.numel() for p in own),
                     "reason": _reason(name, module, tied)})
    return rows
