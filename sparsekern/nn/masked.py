"""Masked layers for gradual magnitude pruning: a fixed 0/1 mask per weight, set by ``GMP``."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sparsekern.nn.base import SparseModule
from sparsekern.nn.slow_path import keep_slow_path


class _MaskedMixin(SparseModule):
    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        keep_slow_path(self)

    def effective_weight(self) -> Tensor:
        return self.weight * self.mask

    def apply_mask_(self) -> None:
        """Zero the pruned weights in place (after each optimizer step, so momentum cannot revive them)."""
        with torch.no_grad():
            self.weight.mul_(self.mask)


class MaskedLinear(_MaskedMixin, nn.Linear):
    """nn.Linear with a pruning mask (buffer ``mask``, all ones until GMP prunes)."""

    dense_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class _MaskedConv(_MaskedMixin):
    """What MaskedConv1d and MaskedConv2d share: nn.ConvNd's constructor plus the mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_mask()

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class MaskedConv2d(_MaskedConv, nn.Conv2d):
    """nn.Conv2d with a pruning mask (buffer ``mask``, all ones until GMP prunes)."""

    dense_type = nn.Conv2d


class MaskedConv1d(_MaskedConv, nn.Conv1d):
    """nn.Conv1d with a pruning mask (buffer ``mask``, all ones until GMP prunes)."""

    dense_type = nn.Conv1d
