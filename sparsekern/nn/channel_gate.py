"""A standalone per-channel gate for activations (conv -> BN -> gate -> ReLU, as in Dep-L0)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from sparsekern import ops
from sparsekern.nn.gates import BETA, GAMMA, ZETA, HardConcreteGates


class ChannelGate(HardConcreteGates, nn.Module):
    """Multiplies channel c of x [B, C, ...] by a hard-concrete gate, sampled per example in
    training (``gated_activation``), deterministic in eval. A closed channel is exactly 0, so
    placed after BatchNorm and before ReLU it removes the channel (``finalize`` shrinks it).

    ``log_alpha_source``: a callable returning log_alpha [C] (e.g. a Dep-L0 generator's
    output for this layer) instead of an own Parameter. ``cost_per_channel``: what one open
    channel costs in ``regularization`` (lam * P(open) * cost_per_channel), e.g. the FLOPs or
    the weights the channel keeps alive elsewhere.
    """

    def __init__(self, num_channels: int, *, drop_rate: float = 0.5, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA, log_alpha_source: Callable[[], Tensor] | None = None,
                 cost_per_channel: float = 1.0, device=None, dtype=None):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"ChannelGate: num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        self.cost_per_channel = float(cost_per_channel)
        self._init_gates((num_channels,), drop_rate, beta, gamma, zeta, log_alpha_source,
                         {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"ChannelGate: expected x of shape [B, {self.num_channels}, ...], got {tuple(x.shape)}")
        if not self.training:
            z = self.eval_gates().to(x.dtype)
            return x * z.reshape((1, -1) + (1,) * (x.dim() - 2))
        la = self.gate_log_alpha()
        seed, offset = self.take_noise(x.shape[0] * self.num_channels)
        return ops.gated_activation(x, la, seed, offset, **self.hc_kwargs())

    def l0_penalty(self, lam: float, prior_prec: float = 0.0, cost_scale: float = 1.0, *,
                   reference_terms: bool = False) -> Tensor:
        """``lam * cost_scale * cost_per_channel * sum_c P(z_c != 0)`` (no weights of its own);
        ``reference_terms``: P clamped to [1e-6, 1 - 1e-6] as in the L0 reference code."""
        p = self.clamped_open_probability().sum() if reference_terms else self.expected_l0()
        return p * (lam * cost_scale * self.cost_per_channel)

    def extra_repr(self) -> str:
        return f"{self.num_channels}"
