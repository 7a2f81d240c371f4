"""What every sparse layer shares: the common interface and the gate noise stream."""
from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from sparsekern.ops import noise
from sparsekern.ops.checks import unsigned

_U64 = 1 << 64
# Layer types ``from_dense`` takes for a dense type: torch builds nn.MultiheadAttention.out_proj
# as a Linear subclass that adds no state.
DENSE_ALIASES = {nn.Linear: (nn.Linear, NonDynamicallyQuantizableLinear)}


def dense_layer_args(layer: nn.Module) -> dict:
    """Constructor arguments that rebuild ``layer`` (an nn.Linear, nn.Conv1d or nn.Conv2d) with the same shapes."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return dict(in_channels=layer.in_channels, out_channels=layer.out_channels, kernel_size=layer.kernel_size,
                    stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                    bias=layer.bias is not None, padding_mode=layer.padding_mode)
    if isinstance(layer, nn.Linear):
        return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)
    raise TypeError(f"expected an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(layer).__name__}")


class SparseModule:
    """Mixin of every sparse weight layer (subclass of nn.Linear / nn.Conv1d / nn.Conv2d, or HF Conv1D).

    ``effective_weight()`` / ``effective_bias()`` are the tensors an eval-mode forward uses
    (deterministic), ``nonzero_mask()`` marks the weights that survive, ``to_dense()`` bakes
    them into a plain ``dense_type`` layer.
    """

    dense_type: type = nn.Module

    def effective_weight(self) -> Tensor:
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        return self.bias

    def _rows(self, t: Tensor) -> Tensor:
        """A weight-shaped tensor as [out, in, ...] (the layout of nn.Linear / nn.Conv2d weights;
        Hugging Face's Conv1D stores [in, out] and overrides this)."""
        return t

    def _from_rows(self, t: Tensor) -> Tensor:
        """The inverse of ``_rows``: [out, in, ...] back to the stored weight's layout."""
        return t

    @classmethod
    def _dense_args(cls, layer: nn.Module) -> dict:
        """Constructor arguments of a layer of ``layer``'s shapes."""
        return dense_layer_args(layer)

    def _new_dense(self, device, dtype) -> nn.Module:
        """An empty ``dense_type`` layer of this layer's shapes."""
        return self.dense_type(**self._dense_args(self), device=device, dtype=dtype)

    def weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias this layer's forward applies now (training: STR's thresholded,
        L0's sampled ones; eval: the effective ones), for code that applies them itself, as
        ``nn.MultiheadAttention`` does with its ``out_proj``."""
        return self.effective_weight(), self.effective_bias()

    def nonzero_mask(self) -> Tensor:
        with torch.no_grad():
            return self.effective_weight() != 0

    @classmethod
    def from_dense(cls, layer: nn.Module, **opts):
        """A sparse layer with ``layer``'s shapes, weight and bias (copied), device, dtype and mode."""
        if type(layer) not in DENSE_ALIASES.get(cls.dense_type, (cls.dense_type,)):
            raise TypeError(f"{cls.__name__}.from_dense: layer must be a plain {cls.dense_type.__name__}, "
                            f"got {type(layer).__name__}")
        new = cls(**cls._dense_args(layer), **opts, device=layer.weight.device, dtype=layer.weight.dtype)
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
        layer = self._new_dense(weight.device, self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer


class NoiseStream:
    """Mixin: the (seed, offset) of docs/math.md §4 for a module that samples gates.

    They live in an int64 buffer ``noise_state = [seed, offset]`` (the int64 with each uint64's
    bits) that every training forward advances in place by ``numel(gates)``, so no two steps
    reuse noise. Being a tensor, not a Python int, the counter is graph data under
    ``torch.compile``: no guard on it, no recompile per step, and the in-place advance is part
    of the graph. The seed is drawn from torch's global generator when the module is built
    (``torch.manual_seed`` makes runs reproducible); the buffer is in the state_dict, so
    checkpoints resume the stream. Old checkpoints (``_extra_state`` with ints) still load.
    """

    def _init_noise(self, device=None) -> None:
        seed = int(torch.randint(0, 1 << 62, (1,)).item())
        self.register_buffer("noise_state", torch.tensor([seed, 0], dtype=torch.int64, device=device))

    def take_noise(self, numel: int) -> tuple:
        """The op arguments for ``numel`` gates, the stream advanced past them (wrapping mod 2**64).

        Under ``torch.compile`` and while a CUDA graph is captured: ``(noise,)``, a tensor copy of
        the state taken and advanced by one device op, so every replay reads and advances the live
        counter (host ints would be frozen into the graph, and reading the state would fail during
        capture). Eager: ``(seed, offset)`` ints, the cheapest per-call path (the int ops).
        """
        if torch.compiler.is_compiling():
            return (noise.take_noise(self.noise_state, numel),)
        if _graph_capturing():
            # Replays advance the buffer behind autograd's version counter: from now on eager
            # forwards read the buffer (a sync) instead of trusting the host copy.
            self.__dict__["_noise_in_graph"] = True
            return (noise.take_noise(self.noise_state, numel),)
        state = self.noise_state
        mirror = None if self.__dict__.get("_noise_in_graph") else self.__dict__.get("_noise_mirror")
        if mirror is not None and mirror[0]() is state and mirror[1] == state._version:
            seed, offset = mirror[2], mirror[3]
        else:  # first call, or the buffer was loaded, moved or written: read it (a device sync on GPUs)
            seed, offset = (unsigned(v) for v in state.tolist())
        new_offset = (offset + numel) % _U64
        # fill_ on a view: a kernel with the value as its argument. Item assignment (state[1] = v)
        # would copy a CPU scalar tensor to the device, a host sync on CUDA every forward.
        state[1:].fill_(_signed(new_offset))
        # The host copy of the state saves reading the buffer back (a host sync per layer and step
        # on a GPU); the buffer's identity and version tell when something else changed it.
        self.__dict__["_noise_mirror"] = (weakref.ref(state), state._version, seed, new_offset)
        return seed, offset

    def __getstate__(self):  # pickling: drop the host copy (a weak reference)
        state = self.__dict__.copy()
        state.pop("_noise_mirror", None)
        return state

    @property
    def noise_seed(self) -> int:
        return unsigned(int(self.noise_state[0]))

    @property
    def noise_offset(self) -> int:
        return unsigned(int(self.noise_state[1]))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        old = state_dict.get(prefix + "_extra_state")
        if old is not None and prefix + "noise_state" not in state_dict:  # a checkpoint from before the buffer
            state_dict = dict(state_dict)
            del state_dict[prefix + "_extra_state"]
            state_dict[prefix + "noise_state"] = _noise_from_extra_state(type(self).__name__, old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _graph_capturing() -> bool:
    """A CUDA graph capture is under way on the current stream (never initialises CUDA)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _signed(v: int) -> int:
    return v - _U64 if v >= 1 << 63 else v


def _noise_from_extra_state(owner: str, state) -> Tensor:
    """The noise_state tensor for the old ``{"noise_seed": int, "noise_offset": int}`` extra state."""
    if not isinstance(state, dict) or set(state) != {"noise_seed", "noise_offset"}:
        raise ValueError(f"{owner}: bad extra state {state!r}; expected noise_seed/noise_offset")
    words = []
    for key in ("noise_seed", "noise_offset"):
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _U64:
            raise ValueError(f"{owner}: {key} must be an int in [0, 2**64), got {v!r}")
        words.append(_signed(v))
    return torch.tensor(words, dtype=torch.int64)
