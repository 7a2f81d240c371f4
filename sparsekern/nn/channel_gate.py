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

    ``channel_dim``: 1 (default) gates x [B, C, ...] (conv feature maps, or a Linear's [B, F]);
    -1 gates the last dim, the features of a Linear applied to a sequence x [B, T, F] (one gate
    per neuron). With -1, as for ``L0Linear``'s activation gates, every leading index is an
    example: in training each token draws its own gate sample (B*T*F noise values), so the
    penalty's expectation is over tokens; in eval every token sees the same deterministic gate.
    """

    def __init__(self, num_channels: int, *, drop_rate: float = 0.5, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA, log_alpha_source: Callable[[], Tensor] | None = None,
                 cost_per_channel: float = 1.0, channel_dim: int = 1, device=None, dtype=None):
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"ChannelGate: num_channels must be a positive int, got {num_channels!r}")
        if isinstance(channel_dim, bool) or channel_dim not in (1, -1):
            raise ValueError(f"ChannelGate: channel_dim must be 1 or -1, got {channel_dim!r}")
        self.num_channels, self.channel_dim = num_channels, channel_dim
        self.cost_per_channel = float(cost_per_channel)
        self._init_gates((num_channels,), drop_rate, beta, gamma, zeta, log_alpha_source,
                         {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[self.channel_dim] != self.num_channels:
            want = f"[B, {self.num_channels}, ...]" if self.channel_dim == 1 else f"[..., {self.num_channels}]"
            raise ValueError(f"ChannelGate: expected x of shape {want}, got {tuple(x.shape)}")
        if self.channel_dim == -1 and x.dim() > 2:  # [B, T, F]: every leading index is an example
            return self(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        if not self.training:
            z = self.eval_gates().to(x.dtype)
            return x * z.reshape((1, -1) + (1,) * (x.dim() - 2))
        la = self.gate_log_alpha()
        noise = self.take_noise(x.shape[0] * self.num_channels)
        return ops.gated_activation(x, la, *noise, **self.hc_kwargs())

    def l0_penalty(self, lam: float, prior_prec: float = 0.0, cost_scale: float = 1.0, *,
                   reference_terms: bool = False) -> Tensor:
        """``lam * cost_scale * cost_per_channel * sum_c P(z_c != 0)`` (no weights of its own);
        ``reference_terms``: P clamped to [1e-6, 1 - 1e-6] as in the L0 reference code."""
        p = self.clamped_open_probability().sum() if reference_terms else self.expected_l0()
        return p * (lam * cost_scale * self.cost_per_channel)

    def extra_repr(self) -> str:
        return f"{self.num_channels}" + (", channel_dim=-1" if self.channel_dim == -1 else "")
