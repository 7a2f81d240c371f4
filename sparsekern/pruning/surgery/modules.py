"""Finding the sparse layers and gates of a model, and its global sparsity."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from sparsekern.nn import HardConcreteGates, SparseModule


def sparse_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every sparse weight layer (STR, L0, masked), in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, SparseModule):
            yield name, module


def gate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every module with hard-concrete gates (L0 layers and ChannelGate)."""
    for name, module in model.named_modules():
        if isinstance(module, HardConcreteGates):
            yield name, module


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """{module name: the other names of its ``weight``} for every module whose weight Parameter is
    also held elsewhere: tied weights (GPT-2's ``lm_head.weight is transformer.wte.weight``), or
    one module registered under two names. Swapping such a layer would untie it."""
    holders: dict[int, list[str]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    tied = {}
    for mname, module in model.named_modules():
        weight = module._parameters.get("weight")
        names = holders.get(id(weight), []) if weight is not None else []
        if len(names) > 1:
            mine = f"{mname}.weight" if mname else "weight"
            tied[mname] = [n for n in names if n != mine] or names[1:]
    return tied


def count_zeros(layers) -> tuple[int, int]:
    """(zero weights, total weights) of the effective (eval-mode) weights of ``layers``."""
    zeros = total = 0
    with torch.no_grad():
        for layer in layers:
            mask = layer.nonzero_mask()
            zeros += int(mask.numel() - mask.sum().item())
            total += mask.numel()
    return zeros, total


def global_sparsity(model: nn.Module) -> float:
    """Fraction of zero effective weights over all sparse layers (0.0 when there are none)."""
    zeros, total = count_zeros(m for _, m in sparse_modules(model))
    return zeros / total if total else 0.0
