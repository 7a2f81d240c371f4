"""Structured channel gates for L0-HC and Dep-L0 (SPEC 3): placement and the gate chain.

``gate_channels(model, dependency=None | "forward" | "backward")`` puts a ChannelGate after
each gated layer: the built-in models' slots (``model.gate_sites()``), else the layers named
in ``layers``, else every Conv2d -> BatchNorm2d pair found with torch.fx. dependency None
gives independent gates (``log_alpha ~ N(3, 0.01)``, the L0-HC baseline); "forward" /
"backward" gives Dep-L0: a ``GateGenerator`` (registered as ``model.gate_generator``) feeds
every gate. Each gate gets a ``chain`` link (kernel area and input channels of its layer) used
by the coupled penalty in ``regularization``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsekern.nn import ChannelGate, GateGenerator
from sparsekern.pruning.surgery.flops import hooked_eval_forward

HC_INIT_MEAN = 3.0  # SPEC 3: independent log_alpha ~ N(3, 0.01); generator biases N(3, 0.01)
_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class ChainLink:
    """What a gate's layer costs per (input channel x output channel): its kernel area (k^2,
    1 for a Linear), its dense input channels (E[C_0] for the first link) and, once measured
    (``cost="flops"``), its output positions H*W."""
    kernel_area: int
    in_channels: int
    positions: float | None = None
    # A head or neuron gate of a transformer (``transformer_gating``): its cost is its own, not
    # a product with the previous gate's. Per open channel: ``unit_weights`` weights, and per
    # example ``unit_flops * T + unit_quadratic * T^2`` FLOPs (T = positions, the sequence length).
    unit_weights: float | None = None
    unit_flops: float = 0.0
    unit_quadratic: float = 0.0

    def term(self, previous, current, flops: bool):
        """The cost of this link with ``previous`` open channels before it and ``current`` in it."""
        if self.unit_weights is not None:
            if not flops:
                return current * self.unit_weights
            return current * (self.unit_flops * self.positions + self.unit_quadratic * self.positions ** 2)
        return previous * current * self.kernel_area * (self.positions if flops else 1)


class GatedModule(nn.Sequential):
    """``module`` followed by its ChannelGate (how a gate is inserted into a user model)."""


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _link(layer: nn.Module, name: str) -> ChainLink:
    if not isinstance(layer, _LAYERS):
        raise ValueError(f"gate_channels: {name!r} is a {type(layer).__name__}, expected an nn.Conv2d or nn.Linear")
    if isinstance(layer, nn.Linear):
        return ChainLink(1, layer.in_features)
    return ChainLink(layer.weight[0, 0].numel(), layer.in_channels)


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every Conv2d whose only user is a BatchNorm2d."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable code
        raise ValueError(f"gate_channels: torch.fx cannot trace {type(model).__name__} ({str(e).splitlines()[0]}); "
                         "pass layers=[names of the Conv2d/Linear layers to gate]") from e
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules.get(user.target), nn.BatchNorm2d):
                pairs.append((node.target, user.target))
    return pairs


def _user_sites(model: nn.Module, layers) -> list[tuple[str, str]]:
    """(layer name, name of the module the gate follows) for a model without gate slots."""
    if layers is None:
        pairs = _fx_pairs(model)
        if not pairs:
            raise ValueError(f"gate_channels: found no Conv2d -> BatchNorm2d pair in {type(model).__name__}; "
                             "pass layers=[names of the Conv2d/Linear layers to gate]")
        return pairs
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not layers:
        raise ValueError(f"gate_channels: layers must be a non-empty list of layer names, got {layers!r}")
    modules = dict(model.named_modules())
    follows = {}
    try:
        follows = dict(_fx_pairs(model))
    except ValueError:
        pass  # untraceable: gate right after each named layer
    for name in layers:
        if name not in modules:
            raise ValueError(f"gate_channels: layers: model has no module {name!r}")
    return [(name, follows.get(name, name)) for name in layers]


def gate_channels(model: nn.Module, dependency: str | None = None, *, layers=None) -> list[ChannelGate]:
    """Insert the channel gates (module docstring) in place; returns them in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gate_channels: model must be an nn.Module, got {type(model).__name__}")
    if any(isinstance(m, ChannelGate) for m in model.modules()):
        raise ValueError("gate_channels: the model already has channel gates")
    if dependency is not None and isinstance(model, nn.Sequential):
        raise ValueError("gate_channels: Dep-L0 registers its generator on the model, which an nn.Sequential "
                         "would run as a layer; wrap the Sequential in an nn.Module")
    modules = dict(model.named_modules())
    if hasattr(model, "gate_sites") and layers is None:
        places = [(s.layer, s.slot, True) for s in model.gate_sites()]
    else:
        places = [(layer, after, False) for layer, after in _user_sites(model, layers)]
    links = [_link(modules[layer], layer) for layer, _, _ in places]
    widths = [modules[layer].weight.shape[0] for layer, _, _ in places]
    ref = modules[places[0][0]].weight
    generator = None
    if dependency is not None:
        generator = GateGenerator(widths, dependency, input_width=getattr(model, "generator_input_width", None),
                                  bias_mean=HC_INIT_MEAN, device=ref.device, dtype=ref.dtype)
        model.gate_generator = generator
    gates = []
    for i, ((layer, where, is_slot), link, width) in enumerate(zip(places, links, widths)):
        source = None if generator is None else generator.source(i)
        # A Linear's features are its output's last dim ([B, F] or a sequence's [B, T, F]).
        dim = -1 if isinstance(modules[layer], nn.Linear) else 1
        gate = ChannelGate(width, log_alpha_source=source, channel_dim=dim, device=ref.device, dtype=ref.dtype)
        if generator is None:
            with torch.no_grad():
                gate.log_alpha.normal_(HC_INIT_MEAN, 0.01)
        gate.chain = link
        _set_module(model, where, gate if is_slot else GatedModule(modules[where], gate))
        gates.append(gate)
    return gates


def chained_gates(model: nn.Module) -> list[ChannelGate]:
    """The channel gates ``gate_channels`` placed, in module order (the penalty's chain)."""
    return [m for m in model.modules() if isinstance(m, ChannelGate) and getattr(m, "chain", None) is not None]


def measure_positions(model: nn.Module, example_input) -> None:
    """Record each chained gate's output positions from an eval forward: H*W after a conv, 1 after
    a Linear on [B, F], T after a Linear on a sequence [B, T, F]."""
    gates = chained_gates(model)
    seen = {}

    def hook(module, inputs, output):
        # per example: H*W, or T (a head gate's channel is head_dim wide)
        seen[module] = output.numel() / output.shape[0] / module.num_channels / getattr(module, "head_dim", 1)

    hooked_eval_forward(model, example_input, [(g, hook) for g in gates])
    for g in gates:
        g.chain.positions = seen[g]
