"""``finalize``: export a sparse model as a plain PyTorch model (the dense layer types only).

Every sparse layer becomes its ``dense_type`` with the eval-mode effective weight baked in
(zeros included), so an unstructured model's state_dict loads into the original architecture.
ChannelGates are folded into the BatchNorm (or layer) before them. With ``shrink=True``,
channels closed by structured gates (L0 ``out``/``in`` granularity, ChannelGate) are removed
physically, inside ``nn.Sequential`` chains (nested Sequentials are flattened into one chain):

    producer (Linear/Conv2d) -> [BatchNorm] -> [ChannelGate] -> [activation, Dropout, pooling,
    Identity] -> [Flatten] -> consumer (Linear/Conv2d)

A closed channel is dropped from the producer's rows/bias, the BatchNorm between, and the
consumer's inputs (after a Flatten: the channel's H*W block of features). When a closed
channel still carries a constant to the consumer (e.g. BatchNorm's shift after an ``out``-gated
conv), that constant is folded into the consumer's bias, which is exact for a Linear or an
unpadded conv; a padded conv then raises. Inputs of the first layer and outputs of the last
layer of a model that is itself an nn.Sequential stay (as zeros): they are the model's
interface. Anything else structured that cannot be shrunk (a gate outside a Sequential chain,
an unsupported module between, grouped convs) raises ValueError; ``shrink=False`` then
exports the same function without removing channels: for a user model gated by
``sparsify(model, "l0_hc" | "dep_l0")`` (e.g. a residual one) that is the model's own classes
and state_dict keys, each gate folded into its BatchNorm or layer (closed channels as zeros),
``GatedModule`` wrappers and Dep-L0's generator gone. torch's MultiheadAttention and Hugging
Face's Conv1D come back as their own types. Built-in models gated by
``sparsify(model, "l0_hc" | "dep_l0")`` are shrunk by ``shrink_model`` (any architecture
they have: VGG-16, ResNet-20/56, LeNets). Transformers with head and neuron gates
(``transformer_gating``) are folded and shrunk by ``transformer_shrink.shrink_transformer``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sparsekern.nn import L0_LAYERS, ChannelGate, GateGenerator, HardConcreteGates, SparseModule
from sparsekern.nn.attention import SparseMultiheadAttention
from sparsekern.nn.conv1d import is_conv1d
from sparsekern.pruning.surgery.channel_gating import GatedModule
from sparsekern.pruning.surgery.shrink import shrink_model, slice_inputs, slice_outputs
from sparsekern.pruning.surgery.transformer_gating import transformer_gates
from sparsekern.pruning.surgery.transformer_shrink import shrink_transformer

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
# Positively homogeneous: relu(x) * z == relu(x * z) for z >= 0, so a gate after them folds before them.
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity) + _DROPOUT
_ELEMENTWISE = _BN + _DROPOUT + (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                                 nn.Hardtanh, nn.Hardswish, nn.Mish, nn.Softplus, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_LAYERS = (nn.Linear, nn.Conv2d)


class _Leaf:
    """A module inside a Sequential chain and where it hangs, so it can be replaced."""

    def __init__(self, parent: nn.Module, key: str, module: nn.Module):
        self.parent, self.key, self.module = parent, key, module

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.key, module)
        self.module = module


def _leaves(seq: nn.Sequential):
    for key, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child)
        else:
            yield _Leaf(seq, key, child)


def _chains(module: nn.Module):
    """Every outermost Sequential as one flat chain of leaves (then chains inside the leaves)."""
    if isinstance(module, nn.Sequential):
        chain = list(_leaves(module))
        yield chain
        for leaf in chain:
            for child in leaf.module.children():
                yield from _chains(child)
    else:
        for child in module.children():
            yield from _chains(child)


def _bake(model: nn.Module, dead_out: dict, dead_in: dict) -> nn.Module:
    """Replace every sparse layer by its baked dense layer; note the units structured gates closed."""
    def baked(layer):
        dense = layer.to_dense()
        if isinstance(layer, L0_LAYERS) and layer.granularity in ("out", "in") and not is_conv1d(layer):
            (dead_out if layer.granularity == "out" else dead_in)[id(dense)] = ~layer.kept()
        return dense

    if isinstance(model, SparseModule):
        return baked(model)
    for parent in list(model.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, SparseModule):
                setattr(parent, key, baked(child))
    return model


@torch.no_grad()
def _fold_gate(chain: list[_Leaf], k: int, dead_out: dict) -> None:
    gate = chain[k].module
    j = k - 1
    while j >= 0 and isinstance(chain[j].module, _HOMOGENEOUS):
        j -= 1
    target = chain[j].module if j >= 0 else None
    z = gate.eval_gates().detach()
    if isinstance(target, _BN):
        if not target.affine:
            target.weight = nn.Parameter(torch.ones_like(target.running_mean))
            target.bias = nn.Parameter(torch.zeros_like(target.running_mean))
            target.affine = True
        target.weight.mul_(z.to(target.weight.dtype))
        target.bias.mul_(z.to(target.bias.dtype))
    elif isinstance(target, _LAYERS) and target.weight.shape[0] == z.numel():
        target.weight.mul_(z.to(target.weight.dtype).reshape((-1,) + (1,) * (target.weight.dim() - 1)))
        if target.bias is not None:
            target.bias.mul_(z.to(target.bias.dtype))
    else:
        found = "nothing" if target is None else type(target).__name__
        raise ValueError(f"finalize: a ChannelGate must follow a BatchNorm, Linear or Conv2d (optionally through "
                         f"ReLU/LeakyReLU/Dropout/Identity) in an nn.Sequential; found {found}")
    dead_out[id(target)] = dead_out.get(id(target), torch.zeros_like(z, dtype=torch.bool)) | (z == 0)
    chain[k].replace(nn.Identity())


def _probe_constants(nch: int, conv: bool, mids: list[nn.Module], dtype, device) -> Tensor:
    """Per-channel value reaching the consumer from a channel that is exactly 0 after the producer."""
    x = torch.zeros((1, nch, 1, 1) if conv else (1, nch), dtype=dtype, device=device)
    for m in mids:
        if isinstance(m, _ELEMENTWISE):
            x = m(x)
    return x.reshape(nch)


def _check_mids(mids: list[nn.Module], where: str) -> None:
    flattened = False
    for m in mids:
        flattened = flattened or isinstance(m, nn.Flatten)
        if flattened and isinstance(m, _BN):
            raise ValueError(f"finalize: cannot shrink across a BatchNorm after Flatten ({where}); "
                             "use finalize(model, shrink=False)")
        if not isinstance(m, _ELEMENTWISE + _POOLS + (nn.Flatten,)):
            raise ValueError(f"finalize: cannot shrink across {type(m).__name__} ({where}); supported between two "
                             "layers: BatchNorm, ChannelGate, elementwise activations, Dropout, Identity, pooling, "
                             "Flatten. Use finalize(model, shrink=False) to export without shrinking")


@torch.no_grad()
def _fold_constants(consumer: nn.Module, const: Tensor, channels: Tensor, spatial: int, where: str) -> None:
    """Add the contribution of constant input channels to the consumer's bias."""
    if isinstance(consumer, nn.Conv2d) and any(p != 0 for p in consumer.padding):
        raise ValueError(f"finalize: closed channels carry a non-zero constant into a padded conv ({where}); "
                         "that cannot be folded exactly. Gate after BatchNorm (ChannelGate) or use shrink=False")
    w = consumer.weight
    if isinstance(consumer, nn.Conv2d):
        per_channel = w.sum((2, 3))  # [out, in]
    else:
        per_channel = w.reshape(w.shape[0], -1, spatial).sum(2)  # [out, channels]
    extra = (per_channel[:, channels] * const[channels].to(w.dtype)).sum(1)
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    consumer.bias.add_(extra)


@torch.no_grad()
def _shrink_pair(producer: nn.Module, mids: list[nn.Module], consumer: nn.Module, remove: Tensor) -> None:
    keep = ~remove
    slice_outputs(producer, [m for m in mids if isinstance(m, _BN)], keep)
    slice_inputs(consumer, keep)


def _shrink_chain(chain: list[_Leaf], dead_out: dict, dead_in: dict, done: set) -> None:
    idx = [i for i, leaf in enumerate(chain) if type(leaf.module) in _LAYERS]
    for p, c in zip(idx, idx[1:]):
        producer, consumer = chain[p].module, chain[c].module
        mids = [leaf.module for leaf in chain[p + 1:c]]
        sources = [producer] + [m for m in mids if isinstance(m, _BN)]
        src = [dead_out[id(m)] for m in sources if id(m) in dead_out]
        if not src and id(consumer) not in dead_in:
            continue
        where = f"{type(producer).__name__} -> {type(consumer).__name__}"
        _check_mids(mids, where)
        for m in (producer, consumer):
            if getattr(m, "groups", 1) != 1:
                raise ValueError(f"finalize: cannot shrink grouped convs ({where}); use shrink=False")
        nch = producer.weight.shape[0]
        n_in = consumer.weight.shape[1]
        spatial = n_in // nch if any(isinstance(m, nn.Flatten) for m in mids) else 1
        if nch * spatial != n_in:
            raise ValueError(f"finalize: {where}: {nch} channels do not match {n_in} consumer inputs")
        closed = torch.zeros(nch, dtype=torch.bool, device=producer.weight.device)
        for d in src:
            closed |= d.to(closed.device)
        unused = torch.zeros_like(closed)
        if id(consumer) in dead_in:
            unused = dead_in[id(consumer)].to(closed.device).reshape(nch, spatial).all(1)
        const = _probe_constants(nch, isinstance(producer, nn.Conv2d), mids, producer.weight.dtype, closed.device)
        carried = closed & ~unused & (const != 0)
        if carried.any():
            if any(isinstance(m, nn.AvgPool2d) and m.count_include_pad and m.padding != 0 for m in mids):
                raise ValueError(f"finalize: closed channels carry a constant through a padded AvgPool2d ({where}), "
                                 "which is not constant at the borders; use finalize(model, shrink=False)")
            _fold_constants(consumer, const, carried, spatial, where)
        _shrink_pair(producer, mids, consumer, closed | unused)
        done.update(id(m) for m in sources + [consumer])


def finalize(model: nn.Module, *, shrink: bool = True) -> nn.Module:
    """A deep copy of ``model`` as plain PyTorch (sparse layers -> nn.Linear / nn.Conv2d, ChannelGates
    folded away), in eval mode, computing the eval-mode function of ``model``; with ``shrink``
    the channels closed by structured gates are removed (module docstring: what is supported)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"finalize: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, ChannelGate):
        raise ValueError("finalize: a lone ChannelGate has no layer to fold into")
    if shrink and _gated_built_in(model):
        return shrink_model(model)
    if transformer_gates(model):  # heads and neurons: their own folding and removal
        return shrink_transformer(model, shrink=shrink)
    out = copy.deepcopy(model).eval()
    dead_out: dict[int, Tensor] = {}
    dead_in: dict[int, Tensor] = {}
    out = _bake(out, dead_out, dead_in)
    for m in out.modules():
        if isinstance(m, SparseMultiheadAttention):
            m.restore()  # a plain nn.MultiheadAttention again, out_proj baked
    chains = list(_chains(out))
    for chain in chains:
        for k, leaf in enumerate(chain):
            if isinstance(leaf.module, ChannelGate):
                _fold_gate(chain, k, dead_out)
    _drop_generators(out)  # Dep-L0's gate generator: folded into the gates above, not part of the model
    leftover = [type(m).__name__ for m in out.modules() if isinstance(m, (HardConcreteGates, SparseModule))]
    if leftover:
        raise ValueError(f"finalize: {leftover[0]} outside an nn.Sequential chain cannot be folded away")
    if shrink:
        done: set[int] = set()
        for chain in chains:
            _shrink_chain(chain, dead_out, dead_in, done)
        _check_all_shrunk(out, dead_out, dead_in, done)
    return _unwrap_gated(out).eval()


def _drop_generators(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, GateGenerator):
                delattr(parent, key)


def _unwrap_gated(model: nn.Module) -> nn.Module:
    """Each ``GatedModule(layer, gate)`` whose gate is folded away becomes ``layer`` again, so the
    model has the user's module types and state_dict keys (``conv1.weight``, not ``conv1.0.weight``)."""
    def plain(m):
        rest = list(m.children())[1:]
        return isinstance(m, GatedModule) and all(isinstance(r, nn.Identity) for r in rest)

    if plain(model):
        return model[0]
    for parent in list(model.modules()):
        for key, child in list(parent.named_children()):
            if plain(child):
                setattr(parent, key, child[0])
    return model


def _gated_built_in(model: nn.Module) -> bool:
    """A built-in model whose only sparse parts are the channel gates in its gate slots."""
    if not hasattr(model, "gate_sites"):
        return False
    slots = {site.slot for site in model.gate_sites()}
    gated = [name for name, m in model.named_modules() if isinstance(m, (HardConcreteGates, SparseModule))]
    return bool(gated) and set(gated) <= slots


def _check_all_shrunk(model: nn.Module, dead_out: dict, dead_in: dict, done: set) -> None:
    """Structured gates not shrunk are fine only at the interface of a Sequential model."""
    interface = set()
    if isinstance(model, nn.Sequential):
        layers = [leaf.module for leaf in _leaves(model) if type(leaf.module) in _LAYERS]
        if layers:
            interface = {("in", id(layers[0])), ("out", id(layers[-1]))}
    for side, dead in (("out", dead_out), ("in", dead_in)):
        for key, mask in dead.items():
            if key in done or (side, key) in interface or not bool(mask.any()):
                continue
            raise ValueError(f"finalize: a layer with structured ({side}) gates is not inside an nn.Sequential chain "
                             "finalize can shrink (residual and other user models are not shrunk; see "
                             "sparsekern.pruning.surgery.finalize); finalize(model, shrink=False) returns your "
                             "model's own classes and state_dict keys with the gates folded in (closed channels "
                             "as zeros)")
