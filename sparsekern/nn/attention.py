"""``SparseMultiheadAttention``: an ``nn.MultiheadAttention`` whose ``out_proj`` is a sparse layer.

``nn.MultiheadAttention.forward`` never calls ``out_proj``: both its fused path and
``F.multi_head_attention_forward`` read ``out_proj.weight`` directly, so a swapped-in STR / L0 /
masked ``out_proj`` would be ignored (dense weights in training and eval alike). This subclass
(still an ``nn.MultiheadAttention``, same attributes and state_dict keys, so
``nn.TransformerEncoderLayer`` and user code accept it) always takes the ordinary path and
passes ``out_proj.weight_and_bias()``: the thresholded, masked or (in training) sampled
weights. ``in_proj_weight`` is a bare Parameter, not a layer: it stays dense.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from sparsekern.nn.base import SparseModule


def check_out_proj(mode: str, where: str) -> None:
    """An out_proj of L0 ``mode`` can be applied by its weight alone (not 'activation')."""
    if mode == "activation":
        raise ValueError(f"{where}: nn.MultiheadAttention applies out_proj's weight itself, so L0 mode='activation' "
                         "cannot gate it; use mode='weight' or exclude the out_proj")


class SparseMultiheadAttention(nn.MultiheadAttention):
    """See the module docstring. ``convert(mha)`` once ``mha.out_proj`` is sparse."""

    @classmethod
    def convert(cls, mha: nn.MultiheadAttention) -> "SparseMultiheadAttention":
        """Make ``mha`` (whose out_proj is now sparse) this class, in place: every reference to it
        (its parent, the user's variables) then applies the sparse out_proj. Returns it."""
        if type(mha) is not nn.MultiheadAttention:
            raise TypeError(f"SparseMultiheadAttention.convert: expected an nn.MultiheadAttention, "
                            f"got {type(mha).__name__}")
        if not isinstance(mha.out_proj, SparseModule):
            raise TypeError("SparseMultiheadAttention.convert: out_proj must be a sparse layer already")
        check_out_proj(getattr(mha.out_proj, "mode", "weight"), "SparseMultiheadAttention.convert")
        mha.__class__ = cls  # adds methods only, no state: the same parameters, buffers and hooks
        return mha

    def restore(self) -> nn.MultiheadAttention:
        """Back to a plain nn.MultiheadAttention in place, once out_proj is a plain nn.Linear again."""
        if isinstance(self.out_proj, SparseModule):
            raise ValueError("SparseMultiheadAttention.restore: bake out_proj first (out_proj.to_dense())")
        if type(self.out_proj) is nn.Linear:  # torch builds out_proj as this Linear subclass (no extra state)
            self.out_proj.__class__ = NonDynamicallyQuantizableLinear
        self.__class__ = nn.MultiheadAttention
        return self

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        # nn.MultiheadAttention.forward's ordinary path, with out_proj's weights in its current mode.
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = _seq_first(query, key, value)
        out_weight, out_bias = self.out_proj.weight_and_bias()
        separate = {} if self._qkv_same_embed_dim else {
            "use_separate_proj_weight": True, "q_proj_weight": self.q_proj_weight,
            "k_proj_weight": self.k_proj_weight, "v_proj_weight": self.v_proj_weight}
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, out_weight, out_bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal, **separate)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


def _seq_first(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, T, E] -> [T, B, E], keeping ``query is key is value`` (self-attention's one packed matmul)."""
    if key is value:
        if query is key:
            query = key = value = query.transpose(1, 0)
        else:
            query, key = (x.transpose(1, 0) for x in (query, key))
            value = key
    else:
        query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    return query, key, value
