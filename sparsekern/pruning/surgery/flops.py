"""Dense FLOPs of every Linear/Conv1d/Conv2d (and Hugging Face Conv1D), measured with forward hooks
on a real forward.

FLOPs here are multiply-accumulates per example (the STR paper's convention): a layer
producing ``out`` values per example, each a dot product of ``weight.numel() / out_channels``
terms (in_features, or in_channels/groups * kernel size), costs ``out * that``; biases,
activations, BatchNorm and pooling are not counted. The conv output size is the real one.
The attentions of the transformers ``transformer_sites`` knows also count their two T x T
products (2 T^2 x the context width per example, T the example's sequence length: the FLOPs
of a transformer are stated at the example's length); so does the self-attention of an
``nn.TransformerEncoderLayer``, plain or a ``HeadPrunableMultiheadAttention`` (with head gates,
or shrunk): 2 T_query T_key x heads x head_dim. Other ``nn.MultiheadAttention`` s count their
projections only.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsekern.nn import ChannelGate, GateGenerator
from sparsekern.nn.conv1d import is_conv1d
from sparsekern.nn.head_attention import HeadPrunableMultiheadAttention
from sparsekern.pruning.surgery.transformer_sites import AttentionSite, layer, transformer_sites


@dataclass
class TraceEvent:
    """One call seen in the forward: a weight layer (with its dense FLOPs) or a channel gate."""
    name: str
    module: nn.Module
    dense_flops: float = 0.0
    attention: bool = False  # the T x T products of an attention (``module``: its output projection)
    sequence_length: int = 0  # T, for an attention


def _batch_size(example_input) -> int:
    if isinstance(example_input, Mapping):  # keyword inputs (a Hugging Face batch): the first tensor
        first = next((v for v in example_input.values() if isinstance(v, Tensor)), None)
    else:
        first = example_input[0] if isinstance(example_input, (tuple, list)) else example_input
    if not isinstance(first, Tensor) or first.dim() == 0:
        raise TypeError("example_input must be a batched Tensor (or a tuple of inputs whose first is one, "
                        "or a dict of keyword inputs holding one)")
    return first.shape[0]


def _call(model: nn.Module, example_input):
    if isinstance(example_input, Mapping):
        return model(**example_input)
    return model(*(example_input if isinstance(example_input, (tuple, list)) else (example_input,)))


def hooked_eval_forward(model: nn.Module, example_input, hooks, kwargs_hooks=(), kwargs_pre_hooks=()) -> None:
    """One eval-mode, no-grad forward with forward ``hooks`` [(module, hook)] (``kwargs_hooks``: hooks
    that also get the keyword arguments; ``kwargs_pre_hooks``: such hooks run before the module);
    every training flag is restored and every hook removed afterwards, even on error."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    handles += [m.register_forward_hook(h, with_kwargs=True) for m, h in kwargs_hooks]
    handles += [m.register_forward_pre_hook(h, with_kwargs=True) for m, h in kwargs_pre_hooks]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


def trace(model: nn.Module, example_input) -> list[TraceEvent]:
    """Events in execution order from an eval-mode, no-grad forward of ``example_input``."""
    batch = _batch_size(example_input)
    events: list[TraceEvent] = []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(module, ChannelGate):
                events.append(TraceEvent(name, module))
                return
            out = module.nf if is_conv1d(module) else module.weight.shape[0]  # Conv1D's weight is [in, out]
            per_value = module.weight.numel() // out
            events.append(TraceEvent(name, module, output.numel() / batch * per_value))
        return hook

    def attention_hook(site):
        def hook(module, inputs, output):
            # scores q k^T and context p v of every query head over the input's T positions
            context = inputs[0]
            t = context.shape[-2] if context.dim() > 2 else 1
            events.append(TraceEvent(f"{site.name}.attention", module, 2.0 * t * t * context.shape[-1], True, t))
        return hook

    def attention_hook_for(name):
        def hook(module, args, kwargs, output):
            q, k, v = (tuple(args) + tuple(kwargs.get(a) for a in ("query", "key", "value")[len(args):]))[:3]
            events.extend(attention_events(name, module, q, k, v, batch, name in site_names))
        return hook

    def head_attention_hook_for(name):
        def hook(module, args, kwargs):  # before the module runs: its rows come before out_proj's
            q, k, v = (tuple(args) + tuple(kwargs.get(a) for a in ("query", "key", "value")[len(args):]))[:3]
            events.extend(head_attention_events(name, module, q, k, v, batch))
        return hook

    sites = [s for s in transformer_sites(model) if isinstance(s, AttentionSite)]
    site_names = {s.name for s in sites}
    # A Dep-L0 generator's Linears make gates, not predictions: not layers of the network.
    generator_parts = {id(p) for m in model.modules() if isinstance(m, GateGenerator) for p in m.modules()}
    hooks, attention, head_attention = [], [], []
    for n, m in model.named_modules():
        if id(m) in generator_parts:
            continue
        if isinstance(m, HeadPrunableMultiheadAttention):  # calls out_proj (hooked below); applies in_proj itself
            head_attention.append((m, head_attention_hook_for(n)))
        elif isinstance(m, nn.MultiheadAttention):  # applies its projections' weights itself: one hook for all
            attention.append((m, attention_hook_for(n)))
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, ChannelGate)) or is_conv1d(m):
            hooks.append((m, hook_for(n)))
    hooks += [(layer(model, site.out), attention_hook(site)) for site in sites  # (torch's attentions: above)
              if not isinstance(model.get_submodule(site.name), nn.MultiheadAttention)]
    hooked_eval_forward(model, example_input, hooks, attention, head_attention)
    return events


class ProjectionWeight:
    """A dense input projection of an nn.MultiheadAttention (a bare Parameter) as a report row's layer."""

    def __init__(self, weight: Tensor):
        self.weight = weight


def attention_events(name: str, mha: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                     batch: int, products: bool = False) -> list[TraceEvent]:
    """The projections of one attention call, in the order it applies them: the input projection
    (packed ``in_proj``: rows [0, E) on the query tokens, [E, 2E) on the key's, [2E, 3E) on the
    value's; or ``q_proj`` / ``k_proj`` / ``v_proj``), then ``out_proj`` on the query tokens.
    ``products``: the attention is one ``transformer_sites`` knows (an encoder layer's): its T x T
    products too, as its head-prunable form counts them."""
    def tokens(x):
        return x.numel() / x.shape[-1] / batch

    def qualified(child):
        return f"{name}.{child}" if name else child

    def layer(child):
        module = mha._modules.get(child)
        return module if module is not None else ProjectionWeight(mha._parameters[f"{child}_weight"])

    e = mha.embed_dim
    if mha._qkv_same_embed_dim:  # each of q, k, v: E rows of E inputs
        events = [TraceEvent(qualified("in_proj"), layer("in_proj"),
                             e * e * (tokens(query) + tokens(key) + tokens(value)))]
    else:
        events = [TraceEvent(qualified(f"{c}_proj"), layer(f"{c}_proj"), e * x.shape[-1] * tokens(x))
                  for c, x in (("q", query), ("k", key), ("v", value))]
    if products:
        events.append(_products(name, mha, query, key, batch, mha.num_heads * mha.head_dim))
    return events + [TraceEvent(qualified("out_proj"), mha.out_proj, e * e * tokens(query))]


def _products(name: str, mha: nn.MultiheadAttention, query: Tensor, key: Tensor, batch: int,
              width: int) -> TraceEvent:
    """The two T_query x T_key products over a context ``width`` wide (the event's module: the
    output projection, whose heads the gates keep)."""
    batched = query.dim() == 3
    tq, tk = _tokens(query, batch, batched), _tokens(key, batch, batched)
    return TraceEvent(f"{name}.attention" if name else "attention", layer(mha, "out_proj"), 2.0 * tq * tk * width,
                      True, int(tk))


def _tokens(x: Tensor, batch: int, batched: bool) -> float:
    """Tokens per example of an attention input ([B, T, E] / [T, B, E], or [T, E] unbatched)."""
    return x.numel() / x.shape[-1] / (batch if batched else 1)


def head_attention_events(name: str, mha: HeadPrunableMultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                          batch: int) -> list[TraceEvent]:
    """A ``HeadPrunableMultiheadAttention`` call before it runs: its ``in_proj`` (q rows on the
    query tokens, k rows on the key's, v rows on the value's) and its two T_query x T_key
    products over its heads. Its ``out_proj`` is a layer it calls: hooked as one."""
    batched = query.dim() == 3
    tokens = sum(_tokens(x, batch, batched) for x in (query, key, value))
    in_proj = mha.in_proj
    rows = in_proj.weight.shape[0] // 3
    return [TraceEvent(f"{name}.in_proj" if name else "in_proj", in_proj, rows * in_proj.weight.shape[1] * tokens),
            _products(name, mha, query, key, batch, mha.num_heads * mha.head_dim)]


def record_flops_per_weight(model: nn.Module, example_input) -> dict[str, float]:
    """Store ``flops_per_weight`` (dense FLOPs / weights: 1 per token for Linear, out H*W for a conv)
    on every Linear/Conv2d that ran; returns {name: value}. Used by FLOPs-weighted penalties."""
    totals: dict[str, float] = {}
    modules: dict[str, nn.Module] = {}
    for e in trace(model, example_input):
        if not isinstance(e.module, ChannelGate) and not e.attention:
            totals[e.name] = totals.get(e.name, 0.0) + e.dense_flops
            modules[e.name] = e.module
    for name, flops in totals.items():
        modules[name].flops_per_weight = flops / modules[name].weight.numel()
    return {n: modules[n].flops_per_weight for n in totals}
