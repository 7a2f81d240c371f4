"""STR and L0 written in plain PyTorch the way the papers' code writes them: the baselines
that ``bench/train_step.py`` times sparsekern against. Written here from the papers' formulas
(docs/math.md §1 and §2), not copied from their repositories.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BETA, GAMMA, ZETA, EPS = 2.0 / 3.0, -0.1, 1.1, 1e-6


def str_weight(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The STR repo's reparameterization: four eager ops, autograd keeps the intermediates."""
    return torch.sign(weight) * torch.relu(torch.abs(weight) - torch.sigmoid(s))


def hard_concrete_sample(log_alpha: torch.Tensor) -> torch.Tensor:
    """AMLab-style training gates: fresh torch.rand noise every call."""
    u = torch.rand_like(log_alpha).clamp(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


class _Plain(nn.Module):
    """Wraps a dense layer; the wrapper adds the method's parameter and reparameterizes the weight."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def _apply_weight(self, x, weight):
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


class PlainSTR(_Plain):
    def __init__(self, layer: nn.Module, s_init: float = -5.0):
        super().__init__(layer)
        self.s = nn.Parameter(torch.full((1,), s_init, device=layer.weight.device))

    def forward(self, x):
        return self._apply_weight(x, str_weight(self.layer.weight, self.s))


class PlainL0(_Plain):
    """One gate per weight (the unstructured variant), log_alpha ~ N(log((1-p)/p), 0.01)."""

    def __init__(self, layer: nn.Module, drop_rate: float = 0.5):
        super().__init__(layer)
        mean = math.log(1 - drop_rate) - math.log(drop_rate)
        self.log_alpha = nn.Parameter(torch.empty_like(layer.weight).normal_(mean, 0.01))

    def forward(self, x):
        return self._apply_weight(x, self.layer.weight * hard_concrete_sample(self.log_alpha))

    def expected_l0(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def plainify(model: nn.Module, method: str) -> nn.Module:
    """Wrap every nn.Linear / nn.Conv2d of ``model`` (in place) with the plain STR or L0 version."""
    wrapper = {"str": PlainSTR, "l0": PlainL0}[method]
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in (nn.Linear, nn.Conv2d):
                setattr(module, child_name, wrapper(child))
    return model


def plain_l0_penalty(model: nn.Module) -> torch.Tensor:
    return sum(m.expected_l0() for m in model.modules() if isinstance(m, PlainL0))
