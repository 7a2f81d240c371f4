"""``sparsify``: swap a model's weight layers (Linear, Conv1d, Conv2d, HF Conv1D, attention projections)
for sparse ones, in place."""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable

from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from sparsekern.nn import (L0Conv1d, L0Conv2d, L0Linear, MaskedConv1d, MaskedConv2d, MaskedLinear, STRConv1d,
                           STRConv2d, STRLinear)
from sparsekern.nn.attention import SparseMultiheadAttention, check_out_proj, dense_input_projections
from sparsekern.nn.conv1d import conv1d_type, sparse_conv1d_types
from sparsekern.pruning import defaults
from sparsekern.pruning.surgery.attention import attention_out_projs, protect_attention
from sparsekern.pruning.surgery.channel_gating import gate_channels
from sparsekern.pruning.surgery.modules import tied_weights
from sparsekern.pruning.surgery.transformer_gating import gate_transformer, is_transformer

LAYER_TYPES = {
    "str": {nn.Linear: STRLinear, nn.Conv1d: STRConv1d, nn.Conv2d: STRConv2d},
    "l0": {nn.Linear: L0Linear, nn.Conv1d: L0Conv1d, nn.Conv2d: L0Conv2d},
    "gmp": {nn.Linear: MaskedLinear, nn.Conv1d: MaskedConv1d, nn.Conv2d: MaskedConv2d},
}


def _layer_types(method: str) -> dict[type, tuple[type, type]]:
    """{dense type: (sparse type, the type whose defaults it takes)} for ``method``."""
    types = {t: (sparse, t) for t, sparse in LAYER_TYPES[method].items()}
    types[NonDynamicallyQuantizableLinear] = (types[nn.Linear][0], nn.Linear)  # nn.MultiheadAttention.out_proj
    conv1d = conv1d_type()  # Hugging Face's transposed Linear, once transformers is imported
    if conv1d is not None:
        types[conv1d] = (sparse_conv1d_types()[method], nn.Linear)
    return types


def _patterns(arg, name: str) -> list[str]:
    if arg is None:
        return []
    if isinstance(arg, str):
        return [arg]
    if isinstance(arg, Iterable) and all(isinstance(p, str) for p in arg):
        return list(arg)
    raise TypeError(f"sparsify: {name} must be a pattern string or a list of them, got {arg!r}")


def _matches(name: str, pattern: str) -> bool:
    """fnmatch on the qualified layer name; a pattern starting with ``re:`` is a regex (re.fullmatch)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


STRUCTURED = {"l0_hc": None, "dep_l0": "forward"}  # channel gates: independent, or from a generator


def sparsify(model: nn.Module, method: str = "str", *, keep_first: bool = False, keep_last: bool = False,
             include=None, exclude=None, **layer_opts) -> nn.Module:
    """Replace every plain nn.Linear / nn.Conv1d / nn.Conv2d of ``model`` by its sparse version, in place.

    Also swapped: nn.Conv1d; ``nn.MultiheadAttention``'s projections: ``out_proj`` and the input
    projection, a bare Parameter (``in_proj_weight``, or ``q_proj_weight`` / ``k_proj_weight`` /
    ``v_proj_weight``), which becomes a bias-free sparse child named ``in_proj`` (``q_proj``, ...;
    the attention then applies them, see ``nn.attention``); and Hugging Face's ``Conv1D``
    (``nn.conv1d``). Left dense: a layer whose weight is tied to another module's
    (GPT-2's ``lm_head`` and ``wte``), since a sparse copy would untie them;
    ``sparsity_report`` lists what was left dense and why.

    method: ``"str"`` (STRLinear/STRConv2d), ``"l0"`` (L0Linear/L0Conv2d) or ``"gmp"``
    (MaskedLinear/MaskedConv2d). Weights and biases are kept (``from_dense``);
    ``layer_opts`` go to every new layer (e.g. ``s_init``, ``per_channel``, ``granularity``).
    keep_first / keep_last: leave the first / last candidate layer dense, in registration
    order (``model.named_modules()``, which for usual models is the forward order).
    include / exclude: a pattern or list of patterns on the qualified name (``"features.0"``):
    shell-style ``fnmatch`` (``"features.*"``), or a regex when prefixed with ``"re:"``
    (``"re:layer[12]\\..*"``, full match). A layer is swapped if it matches some include
    pattern (all layers when include is None) and no exclude pattern. Layers already sparse
    are left alone. Returns ``model``, or the new sparse layer when ``model`` itself is a plain
    nn.Linear / nn.Conv2d (its name is ``""``; a module cannot replace itself in place).
    For ``"l0"`` the default gates are the L0 paper's (see ``sparsekern.pruning.defaults``):
    one per input neuron of a Linear, one per output feature map of a conv, initial drop rate
    ``L0_DROP_RATE``; ``granularity=`` / ``drop_rate=`` override them for every layer.

    ``"l0_hc"`` / ``"dep_l0"``: structured channel gates instead (``channel_gating.gate_channels``):
    independent ones, or Dep-L0's generator with ``dependency="forward"`` (default) or
    ``"backward"``; ``layers=[names]`` picks the gated layers of a user model (default: the
    built-in placement, else the Conv2d -> BatchNorm2d pairs torch.fx finds). A gate after a
    Linear gates its output's last dim, so a Linear applied to a sequence [B, T, D] (e.g.
    ``"encoder.layers.0.linear1"``) gets one gate per neuron (``ChannelGate(channel_dim=-1)``).
    Transformers without ``layers=`` (``transformer_gating.is_transformer``) get one gate per
    attention head and per FFN neuron instead (``transformer_gating.gate_transformer``).
    """
    if method not in LAYER_TYPES and method not in STRUCTURED:
        raise ValueError(f"sparsify: method must be one of {sorted(LAYER_TYPES) + sorted(STRUCTURED)}, got {method!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify: model must be an nn.Module, got {type(model).__name__}")
    if method in STRUCTURED:
        return _gate(model, method, **layer_opts)
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    types = _layer_types(method)
    candidates, projections = [], {}
    for n, m in model.named_modules():
        if type(m) in types:
            candidates.append((n, m))
        elif isinstance(m, nn.MultiheadAttention):  # its input projections are Parameters: stand-in Linears
            for child, linear in dense_input_projections(m).items():
                name = f"{n}.{child}" if n else child
                candidates.append((name, linear))
                projections[name] = (m, child)
    if keep_first:
        candidates = candidates[1:]
    if keep_last:
        candidates = candidates[:-1]
    tied, out_projs = tied_weights(model), attention_out_projs(model)
    chosen = []
    for name, layer in candidates:
        if includes and not any(_matches(name, p) for p in includes):
            continue
        if any(_matches(name, p) for p in excludes) or name in tied:  # tied: left dense (the report says so)
            continue
        sparse, kind = types[type(layer)]
        opts = {**defaults.default_layer_options(method, kind), **layer_opts}
        if name in out_projs or name in projections:  # checked before anything is swapped
            check_out_proj(opts.get("mode", "weight"), f"sparsify: {name}", name.rpartition(".")[2])
        chosen.append((name, layer, sparse, opts))
    for name, layer, sparse, opts in chosen:
        new = sparse.from_dense(layer, **opts)
        if name in projections:
            SparseMultiheadAttention.attach_input_projection(*projections[name], new)
            continue
        if not name:
            return new
        _set_module(model, name, new)
    protect_attention(model)
    return model


def _gate(model: nn.Module, method: str, *, dependency: str | None = None, layers=None) -> nn.Module:
    if method == "l0_hc" and dependency is not None:
        raise ValueError("sparsify: dependency applies to method 'dep_l0' only")
    dependency = dependency or STRUCTURED[method]
    if layers is None and not hasattr(model, "gate_sites") and is_transformer(model):
        gate_transformer(model, dependency)  # heads and neurons (an unknown HF architecture: its error)
    else:
        gate_channels(model, dependency, layers=layers)
    protect_attention(model)  # an encoder holding gates must not pack nested tensors
    return model
