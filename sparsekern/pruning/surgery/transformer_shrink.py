"""Fold a transformer's head and neuron gates away and remove the closed heads and neurons.

Each gate's eval value (in [0, 1]) scales the input columns of the layer it feeds (the output
projection, the down projection), which is exact: the gate multiplied that layer's input. With
``shrink``, the closed heads lose their q/k/v rows and output projection columns, the closed
neurons their up-projection rows and down-projection columns, and the attention module's head
attributes (``num_heads``, ``num_attention_heads``, ``all_head_size``, ``split_size``) are set
to the kept heads (with grouped-query attention, a k/v group's query heads and its k/v head go
together). A layer whose gates all closed keeps one head or group (or neuron) whose output
columns are zero: the function is exact and the model stays loadable; it is counted as kept.

The new shapes are recorded in ``model.sparsekern_shapes`` ({layer: [in, out]}) and
``model.sparsekern_heads`` ({attention: [heads, head_dim]}), and for a Hugging Face model in its config too,
so ``hf_export`` can write a config that rebuilds the shrunk model.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sparsekern.nn import GateGenerator
from sparsekern.nn.conv1d import is_conv1d
from sparsekern.pruning.surgery.transformer_gating import transformer_gates
from sparsekern.pruning.surgery.transformer_sites import AttentionSite, in_features, layer, out_features

HEAD_COUNTS = ("num_heads", "num_attention_heads")
HEAD_WIDTHS = ("all_head_size", "split_size")


def _scale_inputs(m: nn.Module, cols: Tensor) -> None:
    if is_conv1d(m):
        m.weight.mul_(cols.to(m.weight.dtype)[:, None])
    else:
        m.weight.mul_(cols.to(m.weight.dtype))


def _keep_outputs(m: nn.Module, rows: Tensor) -> None:
    if is_conv1d(m):
        m.weight = nn.Parameter(m.weight[:, rows].clone())
        m.nf = int(rows.sum())
    else:
        m.weight = nn.Parameter(m.weight[rows].clone())
        m.out_features = int(rows.sum())
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias[rows].clone())


def _keep_inputs(m: nn.Module, cols: Tensor) -> None:
    if is_conv1d(m):
        m.weight = nn.Parameter(m.weight[cols].clone())
    else:
        m.weight = nn.Parameter(m.weight[:, cols].clone())
        m.in_features = int(cols.sum())


def _unwrap(model: nn.Module, name: str) -> None:
    parent, _, key = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    setattr(holder, key, getattr(holder, key)[1])


@torch.no_grad()
def shrink_transformer(model: nn.Module, *, shrink: bool = True) -> nn.Module:
    """A plain deep copy of a gated transformer in eval mode computing its eval-mode function
    (module docstring); ``shrink=False`` keeps every head and neuron (closed ones as zeros)."""
    out = copy.deepcopy(model).eval()
    shapes: dict[str, list[int]] = {}
    heads: dict[str, list[int]] = {}
    for site, gate in transformer_gates(out):
        z = gate.eval_gates().detach()
        attention = isinstance(site, AttentionSite)
        producers, consumer_name = (site.qkv, site.out) if attention else (site.up, site.down)

        def columns(mask):  # a gate's context features (a k/v group's query heads) or one neuron
            return site.columns(mask) if attention else mask

        consumer = layer(out, consumer_name)
        _scale_inputs(consumer, columns(z))
        _unwrap(out, consumer_name)
        keep = z > 0
        if not keep.any():
            keep[0] = True  # one head (group) / neuron with zero output columns keeps the model valid
        if not shrink or bool(keep.all()):
            continue
        for name in producers:
            m = layer(out, name)
            _keep_outputs(m, site.rows(out, name, keep) if attention else keep)
            shapes[name] = [in_features(m), out_features(m)]
        _keep_inputs(consumer, columns(keep))
        shapes[consumer_name] = [in_features(consumer), out_features(consumer)]
        if attention:
            module, count = out.get_submodule(site.name), int(keep.sum()) * (site.heads // site.groups)
            for attr in HEAD_COUNTS:
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, count)
            for attr in HEAD_WIDTHS:
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, count * site.head_dim)
            heads[site.name] = [count, site.head_dim]
    for parent in list(out.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, GateGenerator):
                delattr(parent, key)
    out.sparsekern_shapes, out.sparsekern_heads = shapes, heads
    config = getattr(out, "config", None)
    if config is not None and hasattr(config, "to_dict"):  # a Hugging Face config: saved with the model
        config.sparsekern_shapes, config.sparsekern_heads = shapes, heads
    return out
