"""FSDP2 for sparsified models: ``shard_model`` and the full-parameter view the pruning code needs.

``shard_model(model)`` applies ``torch.distributed.fsdp.fully_shard`` to every sparse layer
(STR, L0, masked), to a Dep-L0 ``GateGenerator`` and to the root: thresholds, gate logits and
the generator become ordinary sharded (DTensor) parameters; buffers (``noise_state``, GMP
masks, BatchNorm statistics) are not sharded. In a forward, FSDP all-gathers a layer's
parameters first, so the layers and their custom ops see plain full tensors.

Outside a forward the parameters are shards. Everything that reads or edits them there (the
controllers, the penalty, the sparsity, FLOPs and calibration measurements) runs inside
``with full_parameters(model):``, which puts each parameter's full tensor in its place
(``DTensor.full_tensor()``, an all-gather that is differentiable, so a penalty computed inside
trains the shards), suspends FSDP's hooks (a measuring forward runs on those full tensors), and
on exit copies each full tensor that was edited in place back into this rank's shard. Every
rank computes the same values on the same full tensors, so every rank's controller takes the
same decision. Inside, every rank must make the same calls (the gathers are collectives).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from sparsekern.nn import GateGenerator, SparseModule


def _fsdp():
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor
    return fully_shard, DTensor, distribute_tensor


def shard_model(model: nn.Module, mesh=None, **fsdp_kwargs) -> nn.Module:
    """``fully_shard`` each sparse layer (an attention with sparse projections as one unit), each
    ``GateGenerator`` and ``model`` itself (in place;
    returns ``model``). Needs an initialised process group; ``mesh`` defaults to a 1-D mesh over
    all ranks on the device of the model's parameters. ``fsdp_kwargs`` go to every ``fully_shard``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"shard_model: model must be an nn.Module, got {type(model).__name__}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard_model: torch.distributed is not initialised (run under torchrun, or call "
                           "torch.distributed.init_process_group first)")
    fully_shard, DTensor, _ = _fsdp()
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError("shard_model: the model is already sharded")
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh
        first = next(model.parameters(), None)
        device_type = first.device.type if first is not None else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    # An attention applies its projections' weights itself (weight_and_bias(), no forward of theirs that
    # would gather them): it is sharded as one unit with its projections instead.
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)
                  and any(isinstance(c, SparseModule) for c in m.children())]
    inside = {id(c) for a in attentions for c in a.modules() if c is not a}
    for module in list(model.modules()):
        if module is model or id(module) in inside:
            continue
        if isinstance(module, (SparseModule, GateGenerator)) and any(True for _ in module.parameters()) \
                or any(module is a for a in attentions):
            fully_shard(module, mesh=mesh, **fsdp_kwargs)
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (``shard_model`` was applied)."""
    if not dist.is_available():
        return False
    _, DTensor, _ = _fsdp()
    return any(isinstance(p, DTensor) for p in model.parameters())


def _is_fsdp_hook(hook) -> bool:
    owner = getattr(hook, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("torch.distributed.fsdp")


@contextlib.contextmanager
def _fsdp_hooks_suspended(model: nn.Module):
    """FSDP's forward hooks removed for the block (a forward then uses the parameters in place)."""
    saved = []
    for module in model.modules():
        for attr in ("_forward_pre_hooks", "_forward_hooks"):
            hooks = getattr(module, attr)
            fsdp_ids = [k for k, h in hooks.items() if _is_fsdp_hook(h)]
            if fsdp_ids:
                saved.append((module, attr, {k: hooks[k] for k in fsdp_ids}, list(hooks)))
                for k in fsdp_ids:
                    del hooks[k]
    try:
        yield
    finally:
        for module, attr, removed, order in saved:
            hooks = getattr(module, attr)
            others = dict(hooks)
            hooks.clear()  # the original order again (FSDP's pre-hooks run first)
            for k in order:
                if k in removed:
                    hooks[k] = removed[k]
                elif k in others:
                    hooks[k] = others.pop(k)
            hooks.update(others)  # hooks registered in the block and still there


@contextlib.contextmanager
def full_parameters(model: nn.Module):
    """The block sees every sharded parameter of ``model`` as its full tensor (module docstring);
    full tensors edited in place are written back to the shards on exit. No-op for a model
    without DTensor parameters."""
    if not is_sharded(model):
        yield model
        return
    _, DTensor, distribute_tensor = _fsdp()
    swapped = []  # (module, name, sharded parameter, full tensor, its version)
    try:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if isinstance(p, DTensor):
                    full = p.full_tensor()
                    module._parameters[name] = full  # not a Parameter: set directly, as FSDP itself does
                    swapped.append((module, name, p, full, full._version))
        with _fsdp_hooks_suspended(model):
            yield model
    finally:
        for module, name, p, full, version in swapped:
            module._parameters[name] = p
        with torch.no_grad():
            for _, _, p, full, version in swapped:
                if full._version != version:  # edited in place: every rank keeps its part
                    local = distribute_tensor(full.detach(), p.device_mesh, p.placements, src_data_rank=None)
                    p.to_local().copy_(local.to_local())
