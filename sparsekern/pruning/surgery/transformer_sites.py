"""Where transformers take structured gates: one per attention head and one per FFN neuron.

``transformer_sites(model)`` finds, per layer, the attention (its q/k/v projections, or GPT-2's
fused ``c_attn``, and its output projection) and the MLP (its up projections and its down
projection) by the module names the supported architectures use:

- BERT / RoBERTa: ``attention.self.{query,key,value}`` -> ``attention.output.dense``;
  ``intermediate.dense`` -> ``output.dense``
- GPT-2: ``attn.c_attn`` (q|k|v, Conv1D) -> ``attn.c_proj``; ``mlp.c_fc`` -> ``mlp.c_proj``
- ViT, Llama-style and the built-in ``transformer``: ``{q,k,v}_proj`` -> ``o_proj``;
  ``fc1`` -> ``fc2`` or ``{gate,up}_proj`` -> ``down_proj``
- ``nn.TransformerEncoderLayer``: ``self_attn.in_proj`` (q|k|v) -> ``self_attn.out_proj``;
  ``linear1`` -> ``linear2``. torch's MultiheadAttention fixes the head width to embed_dim /
  num_heads and applies its projections' weights itself, so placing head gates makes it a
  ``nn.head_attention.HeadPrunableMultiheadAttention`` (its own head count and width, its q|k|v
  projection a child layer ``in_proj``, ``out_proj`` called on the context). Until then the site
  names an ``in_proj`` that does not exist yet (``gate_transformer`` converts).

A head gate sits on the input of the output projection, a neuron gate on the input of the down
projection (``GatedInput``), so a closed head or neuron is exactly 0 where it is consumed.
Grouped-query attention (fewer k/v heads than query heads, Llama's ``num_key_value_heads``) gets
one gate per k/v group: the query heads sharing a k/v head open and close together, since closing
one query head alone would remove none of the k/v rows it shares. Without grouping a group is
one head.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from sparsekern.nn.conv1d import is_conv1d
from sparsekern.nn.head_attention import HeadPrunableMultiheadAttention, unsupported


class GatedInput(nn.Sequential):
    """A gate then the layer it feeds (a head gate before an output projection, a neuron gate
    before a down projection)."""


@dataclass
class AttentionSite:
    name: str  # the attention module (its head attributes are rewritten when heads are removed)
    qkv: tuple[str, ...]  # q, k, v projections (one fused Conv1D for GPT-2)
    out: str  # the output projection
    heads: int  # query heads
    head_dim: int
    groups: int  # k/v heads: one gate each (== heads without grouped-query attention)

    @property
    def group_width(self) -> int:
        """Context features per gate: the query heads of one k/v group."""
        return self.heads // self.groups * self.head_dim

    def rows(self, model: nn.Module, name: str, kept: Tensor) -> Tensor:
        """The output rows of q/k/v projection ``name`` that the kept groups ``kept`` [groups] keep
        (a fused q|k|v projection holds three copies of the pattern)."""
        rows = out_features(layer(model, name))
        parts = 3 if len(self.qkv) == 1 else 1
        return kept.repeat_interleave(rows // parts // self.groups).repeat(parts)

    def columns(self, kept: Tensor) -> Tensor:
        """The context features (output projection inputs) the kept groups keep."""
        return kept.repeat_interleave(self.group_width)


@dataclass
class MlpSite:
    name: str
    up: tuple[str, ...]  # the projections making the intermediate neurons (gate and up for Llama)
    down: str
    width: int


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module[1] if isinstance(module, GatedInput) else module


def layer(model: nn.Module, name: str) -> nn.Module:
    """The layer ``name`` (inside its ``GatedInput`` when gated)."""
    return _get(model, name)


def _is_layer(m) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


def out_features(m: nn.Module) -> int:
    return m.nf if is_conv1d(m) else m.weight.shape[0]


def in_features(m: nn.Module) -> int:
    return m.weight.shape[0] if is_conv1d(m) else m.weight.shape[1]


def _heads(model: nn.Module, attention: nn.Module, name: str, width: int) -> tuple[int, int]:
    """(heads, head_dim) of an attention whose context is ``width`` wide. The module's head width
    comes first: a shrunk model keeps it while its head count differs from the config's."""
    for attr in ("head_dim", "attention_head_size"):
        d = getattr(attention, attr, None)
        if isinstance(d, int) and not isinstance(d, bool):
            if d < 1 or width % d:
                raise ValueError(f"structured gates: {name}: head_dim {d} does not divide the attention width {width}")
            return width // d, d
    config = getattr(model, "config", None)
    for h in (getattr(attention, "num_heads", None), getattr(attention, "num_attention_heads", None),
              getattr(config, "num_attention_heads", None)):
        if isinstance(h, int) and not isinstance(h, bool):
            if h < 1 or width % h:
                raise ValueError(f"structured gates: {name}: {h} heads do not divide the attention width {width}")
            return h, width // h
    raise ValueError(f"structured gates: cannot tell the head count of attention {name!r}")


def _attention(model, name, module) -> AttentionSite | None:
    def sub(*parts):
        return tuple(f"{name}.{p}" for p in parts)

    if all(_is_layer(_get(model, n)) for n in sub("q_proj", "k_proj", "v_proj", "o_proj")):
        qkv, out = sub("q_proj", "k_proj", "v_proj"), f"{name}.o_proj"
    elif all(_is_layer(_get(model, n)) for n in sub("self.query", "self.key", "self.value", "output.dense")):
        qkv, out = sub("self.query", "self.key", "self.value"), f"{name}.output.dense"
        name = f"{name}.self"
    elif is_conv1d(_get(model, f"{name}.c_attn")) and is_conv1d(_get(model, f"{name}.c_proj")) \
            and getattr(module, "is_cross_attention", False) is False and hasattr(module, "split_size"):
        qkv, out = (f"{name}.c_attn",), f"{name}.c_proj"
    else:
        return None
    width = in_features(_get(model, out))
    heads, d = _heads(model, model.get_submodule(name), name, width)
    rows = [out_features(_get(model, n)) for n in qkv]
    if len(rows) == 1:  # fused q|k|v
        kv = rows[0] - width if rows[0] == 3 * width else None
        kv = None if kv is None else kv // 2
    else:
        kv = rows[1] if rows[0] == width and rows[1] == rows[2] else None
    if kv is None or kv % d or heads % (kv // d):
        raise ValueError(f"structured gates: {name}: q/k/v rows {rows} do not fit {heads} query heads of width {d} "
                         "and a number of k/v heads dividing them")
    return AttentionSite(name, qkv, out, heads, d, kv // d)


def _mlp(model, name) -> MlpSite | None:
    for ups, down in ((("gate_proj", "up_proj"), "down_proj"), (("fc1",), "fc2"), (("c_fc",), "c_proj")):
        mods = [_get(model, f"{name}.{u}") for u in ups]
        d = _get(model, f"{name}.{down}")
        if all(_is_layer(m) for m in mods) and _is_layer(d):
            width = in_features(d)
            if all(out_features(m) == width for m in mods):  # else something between changes the width
                return MlpSite(name, tuple(f"{name}.{u}" for u in ups), f"{name}.{down}", width)
    return None


def _torch_encoder(model, name, module, check: bool) -> list[AttentionSite | MlpSite]:
    """``nn.TransformerEncoderLayer``: its self-attention's heads (module docstring) and its
    feed-forward ``linear1`` -> ``linear2``. An attention that cannot take head gates
    (``head_attention.unsupported``) raises with ``check``, else it is left out."""
    if not isinstance(module, nn.TransformerEncoderLayer):
        return []
    sites = []
    attention = module.self_attn
    why = None if isinstance(attention, HeadPrunableMultiheadAttention) else unsupported(attention)
    if why is None:
        sites.append(AttentionSite(f"{name}.self_attn", (f"{name}.self_attn.in_proj",), f"{name}.self_attn.out_proj",
                                   attention.num_heads, attention.head_dim, attention.num_heads))
    elif check:
        raise ValueError(f"structured gates: {name}.self_attn {why}; pass layers=[names of the Linear layers "
                         "to gate] to gate the feed-forward neurons only")
    up, down = _get(model, f"{name}.linear1"), _get(model, f"{name}.linear2")
    if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
        sites.append(MlpSite(name, (f"{name}.linear1",), f"{name}.linear2", down.in_features))
    return sites


def _bert_mlp(model, name) -> MlpSite | None:
    """BERT's layer: ``intermediate.dense`` -> ``output.dense``."""
    up, down = _get(model, f"{name}.intermediate.dense"), _get(model, f"{name}.output.dense")
    if _is_layer(up) and _is_layer(down) and out_features(up) == in_features(down):
        return MlpSite(f"{name}.intermediate", (f"{name}.intermediate.dense",), f"{name}.output.dense",
                       in_features(down))
    return None


def transformer_sites(model: nn.Module, *, check: bool = False) -> list[AttentionSite | MlpSite]:
    """The attention and MLP sites of ``model`` in module order (module docstring); [] if none.
    ``check``: an attention whose heads do not fit raises ValueError (placing gates); otherwise it
    is left out (a report on any model)."""
    sites, taken = [], set()
    for name, module in model.named_modules():
        if isinstance(module, GatedInput) or any(name == t or name.startswith(t + ".") for t in taken):
            continue
        site, found = None, []
        if name and not name.endswith(".self"):
            try:
                site = _attention(model, name, module)
            except ValueError:
                if check:
                    raise
            site = site or _mlp(model, name) or _bert_mlp(model, name)
            found = [site] if site is not None else _torch_encoder(model, name, module, check)
        for site in found:
            sites.append(site)
            taken.add(site.name if isinstance(site, MlpSite) or not site.name.endswith(".self")
                      else site.name[:-len(".self")])
    # in the order their gated layers run (BERT's layer holds its MLP and, below it, its attention)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(sites, key=lambda s: order[s.out if isinstance(s, AttentionSite) else s.down])
