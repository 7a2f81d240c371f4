"""A hard-concrete gate per attention head, applied to the attention context [..., H * d]."""
from __future__ import annotations

from torch import Tensor

from sparsekern.nn.channel_gate import ChannelGate


class HeadGate(ChannelGate):
    """Multiplies head h's slice ``x[..., h*d:(h+1)*d]`` of the attention context (the input of
    the output projection) by gate h. Every leading index (token) is an example, as for
    ``ChannelGate(channel_dim=-1)``: per-token samples in training, one deterministic gate per
    head in eval. A closed head's context is exactly 0, so its q/k/v rows and its output
    projection columns can be removed (``finalize``). ``head_dim``: the context width one gate
    covers: a head's, or with grouped-query attention the query heads sharing one k/v head."""

    def __init__(self, num_heads: int, head_dim: int, **kwargs):
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"HeadGate: head_dim must be a positive int, got {head_dim!r}")
        super().__init__(num_heads, **kwargs)
        self.head_dim = head_dim

    def forward(self, x: Tensor) -> Tensor:
        width = self.num_channels * self.head_dim
        if x.dim() < 2 or x.shape[-1] != width:
            raise ValueError(f"HeadGate: expected x of shape [..., {self.num_channels} heads x {self.head_dim}], "
                             f"got {tuple(x.shape)}")
        # [tokens, H, d]: ChannelGate's dim 1 is the head
        return super().forward(x.reshape(-1, self.num_channels, self.head_dim)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{self.num_channels} heads, head_dim={self.head_dim}"
