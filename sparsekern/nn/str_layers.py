"""STR layers (docs/math.md section 1): weights soft-thresholded by a learned threshold sigmoid(s)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sparsekern import ops
from sparsekern.nn.base import SparseModule
from sparsekern.nn.slow_path import keep_slow_path

# Default initial threshold, relative to each layer's weights (s_init=None): t = 1% of the mean
# |w| (of the layer, or of each row with per_channel), so the layer starts ~1% sparse, the
# gradient of s is alive (the paper's s_init=-3200 makes t and that gradient exactly 0) and
# thresholds start proportional to the layers' weight scales, so a common shift of all s (what
# TargetSparsity applies) prunes layers about uniformly until the gradient says otherwise.
RELATIVE_THRESHOLD = 0.01
DEFAULT_S_INIT = None


class _STRMixin(SparseModule):
    def _init_threshold(self, s_init: float | None, per_channel: bool, factory: dict) -> None:
        bad = isinstance(s_init, bool) or not isinstance(s_init, (int, float)) or s_init != s_init
        if s_init is not None and bad:
            raise ValueError(f"{type(self).__name__}: s_init must be a number or None, got {s_init!r}")
        if not isinstance(per_channel, bool):
            raise TypeError(f"{type(self).__name__}: per_channel must be a bool, got {type(per_channel).__name__}")
        shape = (self._rows(self.weight).shape[0],) if per_channel else (1,)
        self.s = nn.Parameter(torch.zeros(shape, **factory))
        self.per_channel, self.s_init = per_channel, s_init
        self.reset_threshold()
        keep_slow_path(self)

    @torch.no_grad()
    def reset_threshold(self) -> None:
        """Set s from ``s_init``; None: sigmoid(s) = RELATIVE_THRESHOLD * mean |w| (per layer or row)."""
        if self.s_init is not None:
            self.s.fill_(float(self.s_init))
            return
        w = self._rows(self.weight.detach()).abs().float()
        scale = w.reshape(w.shape[0], -1).mean(1) if self.per_channel else w.mean().reshape(1)
        t = (RELATIVE_THRESHOLD * scale).clamp(1e-12, 0.5)
        self.s.copy_(torch.log(t) - torch.log1p(-t))

    def _weights_loaded(self) -> None:
        self.reset_threshold()

    def threshold(self) -> Tensor:
        """The current threshold(s) sigmoid(s)."""
        return torch.sigmoid(self.s.detach())

    def effective_weight(self) -> Tensor:
        if self.s.numel() == 1:  # one threshold: any layout
            return ops.soft_threshold(self.weight, self.s)
        return self._from_rows(ops.soft_threshold(self._rows(self.weight), self.s))

class STRLinear(_STRMixin, nn.Linear):
    """Drop-in nn.Linear whose weight is ``soft_threshold(weight, s)``; ``s`` per layer or per output row."""

    dense_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, s_init: float | None = DEFAULT_S_INIT,
                 per_channel: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_threshold(s_init, per_channel, {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", thresholds={self.s.numel()}"


class _STRConv(_STRMixin):
    """What STRConv1d and STRConv2d share: nn.ConvNd's constructor plus the thresholds."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 s_init: float | None = DEFAULT_S_INIT, per_channel: bool = False, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_threshold(s_init, per_channel, {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", thresholds={self.s.numel()}"


class STRConv2d(_STRConv, nn.Conv2d):
    """Drop-in nn.Conv2d whose weight is ``soft_threshold(weight, s)``; ``s`` per layer or per filter."""

    dense_type = nn.Conv2d


class STRConv1d(_STRConv, nn.Conv1d):
    """Drop-in nn.Conv1d whose weight is ``soft_threshold(weight, s)``; ``s`` per layer or per filter."""

    dense_type = nn.Conv1d
