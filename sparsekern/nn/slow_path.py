"""Keep PyTorch's fused transformer kernels away from sparse layers.

``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` before it) have a "fast path" that,
in eval mode without grad (``no_grad``, ``inference_mode``, a compiled model), hands the raw
``linear1.weight``, ``linear2.weight``, ``self_attn.in_proj_weight`` and ``out_proj.weight``
to one fused kernel and never calls the sub-modules' ``forward``: it would skip every
threshold, mask and gate. The layer documents what turns the fast path off; the per-module one
is "forward pre-/hooks are attached to the module" (any of ``self.modules()``). So every sparse
layer and gate carries a no-op forward pre-hook: an encoder layer holding one always takes the
ordinary path, while the user's other models keep theirs (no global switch such as
``torch.backends.mha.set_fastpath_enabled``). ``nn.MultiheadAttention`` has no such check and
reads ``out_proj.weight`` even on its ordinary path: ``nn.attention.SparseMultiheadAttention``
handles it, and ``nn.TransformerEncoder``'s nested-tensor path is switched off per encoder by
``sparsify`` (``use_nested_tensor = False``). ``nn.head_attention.HeadPrunableMultiheadAttention``
carries the marker itself: a shrunk encoder has no gates left, and the fused kernel would assume
embed_dim / num_heads.
"""
from __future__ import annotations

from torch import nn


def _slow_path_marker(module, args):  # module-level, so models with it still pickle
    return None


def keep_slow_path(module: nn.Module) -> None:
    """Attach the no-op pre-hook (once) that makes enclosing transformer layers skip their fused path."""
    if _slow_path_marker not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_slow_path_marker)


def has_slow_path_marker(module: nn.Module) -> bool:
    return _slow_path_marker in module._forward_pre_hooks.values()
