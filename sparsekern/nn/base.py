"""What every sparse layer shares: the common interface and the gate noise stream."""
from __future__ import annotations

import torch
from torch import Tensor, nn

_U64 = 1 << 64


def dense_layer_args(layer: nn.Module) -> dict:
    """Constructor arguments that rebuild ``layer`` (an nn.Linear or nn.Conv2d) with the same shapes."""
    if isinstance(layer, nn.Conv2d):
        return dict(in_channels=layer.in_channels, out_channels=layer.out_channels, kernel_size=layer.kernel_size,
                    stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                    bias=layer.bias is not None, padding_mode=layer.padding_mode)
    if isinstance(layer, nn.Linear):
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)
    raise TypeError(f"expected an nn.Linear or nn.Conv2d, got {type(layer).__name__}")


class SparseModule:
    """Mixin of every sparse weight layer (subclass of nn.Linear / nn.Conv2d).

    ``effective_weight()`` / ``effective_bias()`` are the tensors an eval-mode forward uses
    (deterministic), ``nonzero_mask()`` marks the weights that survive, ``to_dense()`` bakes
    them into a plain ``dense_type`` layer.
    """

    dense_type: type = nn.Module

    def effective_weight(self) -> Tensor:
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        return self.bias

    def nonzero_mask(self) -> Tensor:
        with torch.no_grad():
            return self.effective_weight() != 0

    @classmethod
    def from_dense(cls, layer: nn.Module, **opts):
        """A sparse layer with ``layer``'s shapes, weight and bias (copied), device, dtype and mode."""
        if type(layer) is not cls.dense_type:
            raise TypeError(f"{cls.__name__}.from_dense: layer must be a plain {cls.dense_type.__name__}, "
                            f"got {type(layer).__name__}")
        new = cls(**dense_layer_args(layer), **opts, device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        new._weights_loaded()
        return new.train(layer.training)

    def _weights_loaded(self) -> None:
        """Hook for parameters initialised from the weights (STR's relative threshold)."""

    def to_dense(self) -> nn.Module:
        """A plain layer whose weight/bias are this layer's eval-mode effective ones (zeros included)."""
        with torch.no_grad():
            weight = self.effective_weight().detach().clone()
            bias = self.effective_bias()
            bias = None if bias is None else bias.detach().clone()
        layer = self.dense_type(**dense_layer_args(self), device=weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer


class NoiseStream:
    """Mixin: the (seed, offset) of SPEC section 4 for a module that samples gates.

    The seed is drawn from torch's global generator when the module is built, so
    ``torch.manual_seed`` makes runs reproducible; every training forward takes
    ``numel(gates)`` counters so no two steps reuse noise. Both live in the module's
    state_dict (``_extra_state``) as Python ints: checkpoints resume the stream and no
    device sync is needed to read them.
    """

    def _init_noise(self) -> None:
        self.noise_seed = int(torch.randint(0, 1 << 62, (1,)).item())
        self.noise_offset = 0

    def take_noise(self, numel: int) -> tuple[int, int]:
        """(seed, offset) for ``numel`` gates, advancing the offset past them."""
        seed, offset = self.noise_seed, self.noise_offset
        self.noise_offset = (offset + numel) % _U64
        return seed, offset

    def get_extra_state(self) -> dict:
        return {"noise_seed": self.noise_seed, "noise_offset": self.noise_offset}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or set(state) != {"noise_seed", "noise_offset"}:
            raise ValueError(f"{type(self).__name__}: bad extra state {state!r}; expected noise_seed/noise_offset")
        for key in ("noise_seed", "noise_offset"):
            v = state[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _U64:
                raise ValueError(f"{type(self).__name__}: {key} must be an int in [0, 2**64), got {v!r}")
        self.noise_seed, self.noise_offset = state["noise_seed"], state["noise_offset"]
