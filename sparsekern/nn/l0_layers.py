"""L0 layers (docs/math.md section 2): weights or activations multiplied by hard-concrete gates."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sparsekern import ops
from sparsekern.nn.base import SparseModule
from sparsekern.nn.gates import BETA, GAMMA, ZETA, HardConcreteGates

GRANULARITIES = ("weight", "out", "in")
MODES = ("weight", "activation")


class _L0Mixin(HardConcreteGates, SparseModule):
    """Gates of granularity ``weight`` (one per weight), ``out`` (per output neuron/filter, bias
    gated too so a closed unit outputs exactly 0) or ``in`` (per input neuron/channel).

    ``mode="weight"``: gates sampled once per training forward and applied to the weights
    (``gated_weight``); ``mode="activation"``: sampled per example and applied to the layer's
    input (``in``) or output (``out``) with ``gated_activation``. In eval() both use the
    deterministic gates folded into the weights, so ``effective_weight()`` is the eval weight.
    """

    def _init_l0(self, granularity: str, mode: str, drop_rate: float, beta: float, gamma: float, zeta: float,
                 log_alpha_source: Callable[[], Tensor] | None, factory: dict) -> None:
        name = type(self).__name__
        if granularity not in GRANULARITIES:
            raise ValueError(f"{name}: granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        if mode == "activation" and granularity == "weight":
            raise ValueError(f"{name}: mode='activation' needs granularity 'in' or 'out' (per-weight gates "
                             "cannot be sampled per example)")
        if granularity == "in" and getattr(self, "groups", 1) != 1:
            raise ValueError(f"{name}: granularity='in' needs groups=1, got groups={self.groups}")
        self.granularity, self.mode = granularity, mode
        rows = self._rows(self.weight)  # per-weight gates keep the stored layout
        shape = {"weight": tuple(self.weight.shape), "out": (rows.shape[0],), "in": (rows.shape[1],)}[granularity]
        self._init_gates(shape, drop_rate, beta, gamma, zeta, log_alpha_source, factory)

    # ------------------------------------------------------------ deterministic (eval) weights
    def _broadcast(self, z: Tensor) -> Tensor:
        """Gates reshaped to broadcast against the weight."""
        rest = (1,) * (self.weight.dim() - 1)
        if self.granularity == "out":
            return self._from_rows(z.reshape((-1,) + rest))
        if self.granularity == "in":
            return self._from_rows(z.reshape((1, -1) + rest[1:]))
        return z

    def effective_weight(self) -> Tensor:
        return self.weight * self._broadcast(self.eval_gates()).to(self.weight.dtype)

    def effective_bias(self) -> Tensor | None:
        if self.bias is None or self.granularity != "out":
            return self.bias
        return self.bias * self.eval_gates().to(self.bias.dtype)

    # ------------------------------------------------------------ training samples
    def _sampled_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        la = self.gate_log_alpha()
        noise = self.take_noise(la.numel())
        kw = self.hc_kwargs()
        if self.granularity == "in":
            # One gate per column. gated_weight on the transposed weight would copy it (and the
            # gradient, twice) into row order every step; gating a column is one broadcast multiply
            # by the same sampled gates, kept in float32 (float64) as gated_weight keeps them.
            z = ops.hard_concrete(la if la.dtype == torch.float64 else la.float(), *noise, **kw)
            weight = torch.mul(self.weight, self._broadcast(z)).to(self.weight.dtype)
        elif self.granularity == "out":  # one gate per row of the [out, in, ...] view
            weight = self._from_rows(ops.gated_weight(self._rows(self.weight), la, *noise, **kw))
        else:
            weight = ops.gated_weight(self.weight, la, *noise, **kw)
        bias = self.bias
        if bias is not None and self.granularity == "out":  # same (seed, offset): the same gates
            bias = bias * ops.hard_concrete(la, *noise, **kw).to(bias.dtype)
        return weight, bias

    def _gate_activation(self, x: Tensor, channel_dim: int) -> Tensor:
        la = self.gate_log_alpha()
        if channel_dim == -1 and x.dim() != 2:  # Linear on [..., F]: every leading index is an example
            return self._gate_activation(x.reshape(-1, x.shape[-1]), -1).reshape(x.shape)
        noise = self.take_noise(x.shape[0] * la.numel())
        return ops.gated_activation(x, la, *noise, **self.hc_kwargs())

    def weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        if not self.training:
            return self.effective_weight(), self.effective_bias()
        if self.mode == "activation":
            raise ValueError(f"{type(self).__name__}: mode='activation' gates the input or output, not the weight; "
                             "code that applies the weight itself needs mode='weight'")
        return self._sampled_weight_and_bias()

    def _gated_forward(self, x: Tensor, apply, channel_dim: int) -> Tensor:
        """``apply(x, weight, bias)`` is the dense op; gates per mode/granularity around it."""
        if not self.training:
            return apply(x, self.effective_weight(), self.effective_bias())
        if self.mode == "weight":
            return apply(x, *self._sampled_weight_and_bias())
        if self.granularity == "in":
            return apply(self._gate_activation(x, channel_dim), self.weight, self.bias)
        return self._gate_activation(apply(x, self.weight, self.bias), channel_dim)

    # ------------------------------------------------------------ penalty
    def group_sizes(self) -> int:
        """Weights per gate."""
        return self.weight.numel() // math.prod(self.gate_shape)

    def l0_penalty(self, lam: float, prior_prec: float = 0.0, cost_scale: float = 1.0, *,
                   reference_terms: bool = False) -> Tensor:
        """``sum_g P(z_g != 0) * sum_{w in g}(lam * cost_scale + 0.5 * prior_prec * w^2)`` (docs/math.md §2).

        ``reference_terms``: as the L0 reference code computes it: P clamped to [1e-6, 1 - 1e-6],
        plus the bias: ungated ``0.5 * prior_prec * sum(b^2)`` when the gates are on the inputs,
        gated ``sum_c P_c * (0.5 * prior_prec * b_c^2 - lam)`` when they are on the outputs (the
        reference's convs; its sign on lam is kept so that runs match it).
        """
        if not reference_terms:
            penalty = self.expected_l0() * (lam * cost_scale * self.group_sizes())
        else:
            penalty = self.clamped_open_probability().sum() * (lam * cost_scale * self.group_sizes())
        if prior_prec:
            sq = self.weight.pow(2)
            rows = self._rows(sq)
            per_gate = {"weight": sq, "out": rows.reshape(rows.shape[0], -1).sum(1),
                        "in": rows.transpose(0, 1).reshape(rows.shape[1], -1).sum(1)}[self.granularity]
            p = self.clamped_open_probability() if reference_terms else self.open_probability()
            penalty = penalty + (p * per_gate.reshape(self.gate_shape)).sum() * (0.5 * prior_prec)
        if reference_terms and self.bias is not None:
            b2 = 0.5 * prior_prec * self.bias.pow(2)
            if self.granularity == "out":
                penalty = penalty + (self.clamped_open_probability() * (b2 - lam * cost_scale)).sum()
            else:
                penalty = penalty + b2.sum()
        return penalty

    def extra_repr(self) -> str:
        return super().extra_repr() + f", granularity={self.granularity}, mode={self.mode}"


class L0Linear(_L0Mixin, nn.Linear):
    """Drop-in nn.Linear with hard-concrete gates (see ``_L0Mixin`` for granularity/mode)."""

    dense_type = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, granularity: str = "weight",
                 mode: str = "weight", drop_rate: float = 0.5, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA, log_alpha_source: Callable[[], Tensor] | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_l0(granularity, mode, drop_rate, beta, gamma, zeta, log_alpha_source,
                      {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        return self._gated_forward(x, F.linear, -1)


class _L0Conv(_L0Mixin):
    """What L0Conv1d and L0Conv2d share: nn.ConvNd's constructor plus the gates."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, granularity: str = "weight",
                 mode: str = "weight", drop_rate: float = 0.5, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA, log_alpha_source: Callable[[], Tensor] | None = None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_l0(granularity, mode, drop_rate, beta, gamma, zeta, log_alpha_source,
                      {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        return self._gated_forward(x, self._conv_forward, 1)


class L0Conv2d(_L0Conv, nn.Conv2d):
    """Drop-in nn.Conv2d with hard-concrete gates (``out`` = one gate per filter, ``in`` = per input channel)."""

    dense_type = nn.Conv2d


class L0Conv1d(_L0Conv, nn.Conv1d):
    """Drop-in nn.Conv1d with hard-concrete gates (``out`` = one gate per filter, ``in`` = per input channel)."""

    dense_type = nn.Conv1d
