"""L0-HC / Dep-L0 gates for transformers: one gate per attention head and per FFN neuron.

``gate_transformer(model, dependency)`` puts a ``HeadGate`` before every attention output
projection (one gate per head; with grouped-query attention, per k/v group) and a
``ChannelGate(channel_dim=-1)`` before every MLP down projection (the sites of
``transformer_sites``), each in a ``GatedInput``. Gate order (the Dep-L0 generator's chain):
module order, heads and neurons of each layer. Each gate's ``chain`` link carries the real cost
of one open channel: a head keeps its d rows of each of q/k/v, d columns of the output
projection and its two T x T x d attention products; a neuron keeps a row of each up projection
and a column of the down projection. Everything is checked before any module is replaced.
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekern.nn import ChannelGate, GateGenerator, HeadGate
from sparsekern.nn.head_attention import HeadPrunableMultiheadAttention
from sparsekern.pruning.surgery.channel_gating import HC_INIT_MEAN, ChainLink
from sparsekern.pruning.surgery.modules import tied_weights
from sparsekern.pruning.surgery.transformer_sites import (AttentionSite, GatedInput, MlpSite, in_features, layer,
                                                          out_features, transformer_sites)


def _link(model: nn.Module, site) -> ChainLink:
    if isinstance(site, AttentionSite):
        # per group (a head without grouped-query attention): its share of the q/k/v rows, its
        # context's columns of the output projection, and its query heads' two T x T products
        weights = sum(in_features(layer(model, n)) * out_features(layer(model, n)) for n in site.qkv) / site.groups
        weights += out_features(layer(model, site.out)) * site.group_width
        return ChainLink(1, site.groups, unit_weights=weights, unit_flops=weights,
                         unit_quadratic=2.0 * site.group_width)
    weights = sum(in_features(layer(model, n)) for n in site.up) + out_features(layer(model, site.down))
    return ChainLink(1, site.width, unit_weights=weights, unit_flops=weights)


def _check(model: nn.Module, sites) -> None:
    tied = tied_weights(model)
    for site in sites:
        names = site.qkv + (site.out,) if isinstance(site, AttentionSite) else site.up + (site.down,)
        for name in names:
            if name in tied:
                raise ValueError(f"structured gates: {name}'s weight is tied to {tied[name][0]}; removing heads or "
                                 "neurons from it would change the other module too")


def is_pretrained_model(model: nn.Module) -> bool:
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def is_transformer(model: nn.Module) -> bool:
    """Whether ``sparsify(model, "l0_hc" | "dep_l0")`` without ``layers=`` places head and neuron
    gates: a Hugging Face model (an unknown one gets ``gate_transformer``'s error), or a model with
    an attention ``transformer_sites`` knows or an ``nn.TransformerEncoderLayer``. (An ``fc1`` ->
    ``fc2`` head alone does not make a CNN a transformer: it keeps its conv -> BatchNorm gates.)"""
    if is_pretrained_model(model) or any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()):
        return True
    return any(isinstance(s, AttentionSite) for s in transformer_sites(model))


def gate_transformer(model: nn.Module, dependency: str | None = None) -> list[ChannelGate]:
    """Insert the head and neuron gates (module docstring) in place; returns them in order."""
    if any(isinstance(m, ChannelGate) for m in model.modules()):
        raise ValueError("structured gates: the model already has channel gates")
    sites = transformer_sites(model, check=True)
    if not sites:
        raise ValueError(f"structured gates: {type(model).__name__} is an architecture without built-in head/neuron "
                         "placements (BERT/RoBERTa, GPT-2, ViT, Llama-style, nn.TransformerEncoderLayer, "
                         "sparsekern's transformer); pass layers=[names of the Linear layers to gate]")
    _check(model, sites)
    for site in sites:  # torch's attention: its own head width and a called out_proj (transformer_sites)
        module = model.get_submodule(site.name)
        if isinstance(site, AttentionSite) and type(module) is nn.MultiheadAttention:
            HeadPrunableMultiheadAttention.convert(module)
    links = [_link(model, s) for s in sites]
    widths = [s.groups if isinstance(s, AttentionSite) else s.width for s in sites]
    ref = layer(model, sites[0].qkv[0] if isinstance(sites[0], AttentionSite) else sites[0].down).weight
    generator = None
    if dependency is not None:
        generator = GateGenerator(widths, dependency, bias_mean=HC_INIT_MEAN, device=ref.device, dtype=ref.dtype)
    gates = []
    for i, (site, link) in enumerate(zip(sites, links)):
        source = None if generator is None else generator.source(i)
        opts = {"log_alpha_source": source, "device": ref.device, "dtype": ref.dtype}
        gate = (HeadGate(site.groups, site.group_width, **opts) if isinstance(site, AttentionSite)
                else ChannelGate(site.width, channel_dim=-1, **opts))
        if generator is None:
            with torch.no_grad():
                gate.log_alpha.normal_(HC_INIT_MEAN, 0.01)
        gate.chain = link
        gates.append(gate)
    if generator is not None:
        model.gate_generator = generator
    for site, gate in zip(sites, gates):
        target = site.out if isinstance(site, AttentionSite) else site.down
        parent, _, key = target.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, key, GatedInput(gate, getattr(holder, key)))
    return gates


def transformer_gates(model: nn.Module) -> list[tuple[AttentionSite | MlpSite, ChannelGate]]:
    """(site, gate) for every site of a gated transformer (``gate_transformer``)."""
    out = []
    for site in transformer_sites(model):
        wrapper = model.get_submodule(site.out if isinstance(site, AttentionSite) else site.down)
        if isinstance(wrapper, GatedInput):
            out.append((site, wrapper[0]))
    return out
