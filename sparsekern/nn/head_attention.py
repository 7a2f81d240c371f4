"""``HeadPrunableMultiheadAttention``: an ``nn.MultiheadAttention`` that can lose heads.

torch's attention derives its head width from ``embed_dim / num_heads`` and reads
``out_proj.weight`` itself, so neither a head gate before ``out_proj`` nor a model with fewer
heads at the same head width fits it. This subclass (swapped in by ``__class__``, so it is still
an ``nn.MultiheadAttention`` that ``nn.TransformerEncoderLayer`` and user code accept) keeps its
own ``num_heads`` and ``head_dim`` (``num_heads * head_dim`` may differ from ``embed_dim``), holds
its packed q|k|v projection as a child layer ``in_proj`` (``nn.Linear(embed_dim, 3 * heads *
head_dim)``, state_dict keys ``in_proj.weight`` / ``in_proj.bias``; the attributes
``in_proj_weight`` / ``in_proj_bias`` read them) and calls ``out_proj`` on the context
[..., heads * head_dim], so a ``GatedInput`` head gate there applies. Its forward is
nn.MultiheadAttention's (masks, ``is_causal``, ``need_weights``, ``batch_first``, unbatched
input, dropout) on ``F.scaled_dot_product_attention``. Separate q/k/v weights (``kdim`` /
``vdim``), ``add_bias_kv`` and ``add_zero_attn`` are refused (``unsupported``). It carries the
slow-path marker (``nn.slow_path``): the fused encoder kernel would assume embed_dim / num_heads.
"""
from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from sparsekern.nn.attention import canonical_masks
from sparsekern.nn.base import SparseModule
from sparsekern.nn.slow_path import keep_slow_path


def unsupported(mha: nn.Module) -> str | None:
    """Why ``mha`` cannot become a ``HeadPrunableMultiheadAttention`` (None: it can)."""
    if type(mha) is not nn.MultiheadAttention:
        return f"is a {type(mha).__name__}, not a plain nn.MultiheadAttention"
    if not mha._qkv_same_embed_dim:
        return "has separate q/k/v weights (kdim/vdim differ from embed_dim), which head gates do not support"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "uses add_bias_kv or add_zero_attn, which head gates do not support"
    return None


def _weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    if isinstance(layer, SparseModule):  # a sparsified projection applies its current weights
        return layer.weight_and_bias()
    return layer.weight, layer.bias


class HeadPrunableMultiheadAttention(nn.MultiheadAttention):
    """See the module docstring. ``convert(mha)`` makes a plain nn.MultiheadAttention this class in place."""

    @classmethod
    def convert(cls, mha: nn.MultiheadAttention) -> "HeadPrunableMultiheadAttention":
        if type(mha) is cls:
            return mha
        why = unsupported(mha)
        if why is not None:
            raise ValueError(f"HeadPrunableMultiheadAttention.convert: the attention {why}")
        weight, bias = mha._parameters.pop("in_proj_weight"), mha._parameters.pop("in_proj_bias")
        in_proj = nn.Linear(1, 1, bias=False, device="meta")  # takes the attention's own Parameters below
        in_proj.weight, in_proj.in_features, in_proj.out_features = weight, weight.shape[1], weight.shape[0]
        if bias is not None:
            in_proj.bias = bias
        mha.__class__ = cls
        mha.add_module("in_proj", in_proj)
        mha.head_dim = mha.embed_dim // mha.num_heads
        keep_slow_path(mha)
        return mha

    @property
    def in_proj_weight(self) -> Tensor:
        return self._modules["in_proj"].weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self._modules["in_proj"].bias

    def _project(self, query: Tensor, key: Tensor, value: Tensor, packed: bool) -> tuple[Tensor, Tensor, Tensor]:
        weight, bias = _weight_and_bias(self.in_proj)
        if packed:  # self-attention: one matmul
            return F.linear(query, weight, bias).chunk(3, dim=-1)
        ws, bs = weight.chunk(3), (None,) * 3 if bias is None else bias.chunk(3)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), ws, bs))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        key_padding_mask, attn_mask = canonical_masks(query, key_padding_mask, attn_mask)
        packed = query is key and key is value
        batched = query.dim() == 3
        if not batched:  # [T, E] -> [1, T, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [T, B, E] -> [B, T, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, tq, tk, h, d = query.shape[0], query.shape[1], key.shape[1], self.num_heads, self.head_dim
        # nn.MultiheadAttention's mask rules: is_causal is a hint that attn_mask is causal
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
        elif key_padding_mask is not None:
            is_causal = False
        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 2 and attn_mask.shape == (tq, tk):
                mask = attn_mask.view(1, 1, tq, tk)
            elif attn_mask.dim() == 3 and attn_mask.shape == (b * h, tq, tk):
                mask = attn_mask.view(b, h, tq, tk)
            else:
                raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)} should be ({tq}, {tk}) or "
                                   f"({b * h}, {tq}, {tk})")
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, tk):
                raise RuntimeError(f"key_padding_mask of shape {tuple(key_padding_mask.shape)} should be ({b}, {tk})")
            padding = key_padding_mask.view(b, 1, 1, tk)
            mask = padding if mask is None else mask + padding
        q, k, v = self._project(query, key, value, packed)
        q, k, v = (y.reshape(b, y.shape[1], h, d).transpose(1, 2) for y in (q, k, v))  # [B, H, T, d]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the probabilities are returned: computed explicitly, as torch does
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
            probs = (scores if mask is None else scores + mask).softmax(-1)
            if dropout > 0:  # torch returns the probabilities after dropout
                probs = F.dropout(probs, dropout)
            weights = probs.mean(1) if average_attn_weights else probs
            context = probs @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        out = self.out_proj(context.transpose(1, 2).reshape(b, tq, h * d))  # a head gate there sees [B, T, H*d]
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
