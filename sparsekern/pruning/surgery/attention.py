"""After a swap: keep torch's transformer modules applying the sparse layers they now hold.

``nn.MultiheadAttention`` reads ``out_proj.weight`` itself, so one with a sparse out_proj
becomes a ``SparseMultiheadAttention`` (in place); an ``nn.TransformerEncoder`` holding sparse
layers or gates stops packing padded batches into nested tensors (its fused path, which
only its layers' fused kernels accept, and those are off for sparse layers: ``nn.slow_path``).
"""
from __future__ import annotations

from torch import nn

from sparsekern.nn import SparseModule
from sparsekern.nn.attention import SparseMultiheadAttention
from sparsekern.nn.slow_path import has_slow_path_marker


def protect_attention(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is nn.MultiheadAttention and isinstance(module.out_proj, SparseModule):
            SparseMultiheadAttention.convert(module)
        if isinstance(module, nn.TransformerEncoder) and any(has_slow_path_marker(m) for m in module.modules()):
            module.use_nested_tensor = False


def attention_out_projs(model: nn.Module) -> set[str]:
    """Qualified names of the ``out_proj`` of every nn.MultiheadAttention in ``model``."""
    return {f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)}
