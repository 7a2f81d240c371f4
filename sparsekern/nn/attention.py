"""``SparseMultiheadAttention``: an ``nn.MultiheadAttention`` whose projections are sparse layers.

``nn.MultiheadAttention.forward`` never calls ``out_proj``: both its fused path and
``F.multi_head_attention_forward`` read ``out_proj.weight`` directly, so a swapped-in STR / L0 /
masked ``out_proj`` would be ignored (dense weights in training and eval alike). Its input
projection is not a layer at all but bare Parameters: ``in_proj_weight`` [3E, E], or
``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` when kdim / vdim differ from E. This
subclass (still an ``nn.MultiheadAttention``, so ``nn.TransformerEncoderLayer`` and user code
accept it) always takes the ordinary path and passes each projection's ``weight_and_bias()``: the
thresholded, masked or (in training) sampled weights. A sparse input projection is a bias-free
child layer ``in_proj`` (or ``q_proj`` / ``k_proj`` / ``v_proj``) in place of its Parameter
(state_dict key ``in_proj.weight`` instead of ``in_proj_weight``; ``in_proj_bias`` stays on the
attention, dense); the attribute ``in_proj_weight`` still reads its raw weight. ``restore()``
gives back a plain ``nn.MultiheadAttention`` with torch's keys once the children are baked.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from sparsekern.nn.base import SparseModule


# {child layer name: the Parameter it replaces}, in the order the attention applies them.
INPUT_PROJECTIONS = {"in_proj": "in_proj_weight", "q_proj": "q_proj_weight", "k_proj": "k_proj_weight",
                     "v_proj": "v_proj_weight"}


def check_out_proj(mode: str, where: str, proj: str = "out_proj") -> None:
    """A projection of L0 ``mode`` can be applied by its weight alone (not 'activation')."""
    if mode == "activation":
        raise ValueError(f"{where}: nn.MultiheadAttention applies {proj}'s weight itself, so L0 mode='activation' "
                         f"cannot gate it; use mode='weight' or exclude the {proj}")


def dense_input_projections(mha: nn.MultiheadAttention) -> dict[str, nn.Linear]:
    """{child name: a bias-free nn.Linear holding that Parameter (not a copy)} for every input
    projection of ``mha`` that is still a bare Parameter: what ``sparsify`` can swap."""
    out = {}
    for child, pname in INPUT_PROJECTIONS.items():
        weight = mha._parameters.get(pname)
        if weight is not None:
            linear = nn.Linear(1, 1, bias=False, device="meta")  # shapes come from the weight set below
            linear.weight = weight
            linear.in_features, linear.out_features = weight.shape[1], weight.shape[0]
            out[child] = linear
    return out


def _projection_property(pname: str, child: str) -> property:
    def get(self):  # the Parameter while it is one, else the sparse child's raw weight
        if pname in self._parameters:
            return self._parameters[pname]
        return self._modules[child].weight
    return property(get, doc=f"``{pname}`` of nn.MultiheadAttention (the raw weight of ``{child}`` once sparse)")


class SparseMultiheadAttention(nn.MultiheadAttention):
    """See the module docstring. ``convert(mha)`` once ``mha.out_proj`` is sparse;
    ``attach_input_projection(mha, child, layer)`` swaps in a sparse input projection."""

    @classmethod
    def convert(cls, mha: nn.MultiheadAttention) -> "SparseMultiheadAttention":
        """Make ``mha`` (whose out_proj or an input projection is now sparse) this class, in place:
        every reference to it (its parent, the user's variables) then applies the sparse weights."""
        if type(mha) is cls:
            return mha
        if type(mha) is not nn.MultiheadAttention:
            raise TypeError(f"SparseMultiheadAttention.convert: expected an nn.MultiheadAttention, "
                            f"got {type(mha).__name__}")
        if not isinstance(mha.out_proj, SparseModule):
            raise TypeError("SparseMultiheadAttention.convert: out_proj must be a sparse layer already")
        check_out_proj(getattr(mha.out_proj, "mode", "weight"), "SparseMultiheadAttention.convert")
        mha.__class__ = cls  # adds methods only, no state: the same parameters, buffers and hooks
        return mha

    @classmethod
    def attach_input_projection(cls, mha: nn.MultiheadAttention, child: str, layer: nn.Module) -> None:
        """Replace ``mha``'s Parameter for ``child`` (``in_proj``, ``q_proj``, ...) by the sparse
        bias-free ``layer`` made from it (``dense_input_projections``); ``mha`` becomes this class."""
        where = f"SparseMultiheadAttention.attach_input_projection({child!r})"
        if not isinstance(mha, nn.MultiheadAttention) or child not in INPUT_PROJECTIONS:
            raise TypeError(f"{where}: expected an nn.MultiheadAttention and one of {list(INPUT_PROJECTIONS)}")
        pname = INPUT_PROJECTIONS[child]
        weight = mha._parameters.get(pname)
        if not isinstance(layer, SparseModule) or weight is None or layer.weight.shape != weight.shape \
                or layer.bias is not None:
            raise ValueError(f"{where}: layer must be a bias-free sparse layer of {pname}'s shape")
        check_out_proj(getattr(layer, "mode", "weight"), where, child)
        mha.__class__ = cls
        del mha._parameters[pname]
        mha.add_module(child, layer)

    def restore(self) -> nn.MultiheadAttention:
        """Back to a plain nn.MultiheadAttention in place, once every projection is a plain nn.Linear
        again (``to_dense()``): the input projections become its Parameters again."""
        children = [c for c in INPUT_PROJECTIONS if c in self._modules]
        if any(isinstance(m, SparseModule) for m in [self.out_proj] + [self._modules[c] for c in children]):
            raise ValueError("SparseMultiheadAttention.restore: bake the projections first (layer.to_dense())")
        if type(self.out_proj) is nn.Linear:  # torch builds out_proj as this Linear subclass (no extra state)
            self.out_proj.__class__ = NonDynamicallyQuantizableLinear
        self.__class__ = nn.MultiheadAttention
        for child in children:
            weight = self._modules.pop(child).weight
            self.register_parameter(INPUT_PROJECTIONS[child], weight)
        return self

    def _input_weight(self, child: str):
        layer = self._modules.get(child)
        return self._parameters.get(INPUT_PROJECTIONS[child]) if layer is None else layer.weight_and_bias()[0]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        # nn.MultiheadAttention.forward's ordinary path, with out_proj's weights in its current mode.
        key_padding_mask, attn_mask = canonical_masks(query, key_padding_mask, attn_mask)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = _seq_first(query, key, value)
        out_weight, out_bias = self.out_proj.weight_and_bias()
        separate = {} if self._qkv_same_embed_dim else {
            "use_separate_proj_weight": True, "q_proj_weight": self._input_weight("q_proj"),
            "k_proj_weight": self._input_weight("k_proj"), "v_proj_weight": self._input_weight("v_proj")}
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self._input_weight("in_proj"), self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, out_weight, out_bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal, **separate)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights


for _child, _pname in INPUT_PROJECTIONS.items():  # the Parameters' names keep working on the subclass
    setattr(SparseMultiheadAttention, _pname, _projection_property(_pname, _child))


def canonical_masks(query: Tensor, key_padding_mask: Tensor | None,
                    attn_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """nn.MultiheadAttention.forward's first step: boolean masks become float masks of query's dtype."""
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                  target_type=query.dtype, check_other=False)
    return key_padding_mask, attn_mask


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
