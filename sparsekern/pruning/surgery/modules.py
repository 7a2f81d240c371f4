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
