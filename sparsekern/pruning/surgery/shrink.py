"""``shrink_model``: a built-in model with channel gates -> the same plain class, physically narrower.

Each gate (``model.gate_sites()``) is folded into the BatchNorm before it (or its layer, when
there is none): it sits after BN or after ReLU, and relu(y) * z == relu(y * z) for z >= 0, so
scaling BN's weight and bias by the eval gates z is exact. Channels with z == 0 are then removed
from the layer's outputs, the BatchNorm and every consumer's inputs (after a Flatten, the
channel's H*W block). The result loads into ``build_model(name, ..., widths=model_widths(...))``.
A layer whose gates all closed keeps one (all-zero) channel so the model stays valid.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from sparsekern.nn import ChannelGate, GateGenerator


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def _fold(site, model: nn.Module, z: torch.Tensor) -> None:
    target = model.get_submodule(site.norm or site.layer)
    shape = (-1,) + (1,) * (target.weight.dim() - 1)
    target.weight.mul_(z.to(target.weight.dtype).reshape(shape))
    if target.bias is not None:
        target.bias.mul_(z.to(target.bias.dtype))


def slice_outputs(layer: nn.Module, norms: list[nn.Module], keep: torch.Tensor) -> None:
    """Keeps output channels ``keep`` of a Linear/Conv and of the BatchNorms that follow it."""
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    n = int(keep.sum())
    setattr(layer, "out_features" if isinstance(layer, nn.Linear) else "out_channels", n)
    for norm in norms:
        norm.num_features = n
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(norm, name)
            if t is not None:  # affine=False / track_running_stats=False leave them None
                setattr(norm, name, nn.Parameter(t[keep].clone()) if isinstance(t, nn.Parameter) else t[keep].clone())


def slice_inputs(consumer: nn.Module, keep: torch.Tensor) -> None:
    """Keeps input channels ``keep`` of a consumer (after a Flatten, each channel's H*W block)."""
    spatial = consumer.weight.shape[1] // keep.numel()
    cols = keep.repeat_interleave(spatial)
    consumer.weight = nn.Parameter(consumer.weight[:, cols].clone())
    setattr(consumer, "in_features" if isinstance(consumer, nn.Linear) else "in_channels", int(cols.sum()))


@torch.no_grad()
def shrink_model(model: nn.Module) -> nn.Module:
    """A plain, narrower deep copy of ``model`` in eval mode computing its eval-mode function."""
    if not hasattr(model, "gate_sites"):
        raise ValueError(f"shrink_model: {type(model).__name__} has no gate_sites(); use finalize(model) instead")
    out = copy.deepcopy(model).eval()
    for site in out.gate_sites():
        gate = out.get_submodule(site.slot)
        if not isinstance(gate, ChannelGate):
            continue
        z = gate.eval_gates().detach()
        _fold(site, out, z)
        parent, key = _parent(out, site.slot)
        setattr(parent, key, nn.Identity())
        keep = z > 0
        if not keep.any():
            keep[0] = True
        if bool(keep.all()):
            continue
        layer = out.get_submodule(site.layer)
        slice_outputs(layer, [out.get_submodule(site.norm)] if site.norm else [], keep)
        for name in site.consumers:
            slice_inputs(out.get_submodule(name), keep)
        for name in site.index_buffers:
            parent, key = _parent(out, name)
            parent.register_buffer(key, keep.nonzero().flatten().to(layer.weight.device))
    for name, child in list(out.named_children()):
        if isinstance(child, GateGenerator):
            delattr(out, name)
    return out


def model_widths(model: nn.Module) -> list[int]:
    """The output width of each gate site's layer (what ``build_model(..., widths=)`` takes)."""
    return [model.get_submodule(site.layer).weight.shape[0] for site in model.gate_sites()]
