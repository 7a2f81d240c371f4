"""STR / L0 / masked versions of Hugging Face's ``Conv1D`` (GPT-2's attention and MLP layers).

``transformers.pytorch_utils.Conv1D`` is a Linear with its weight stored transposed, [in, out].
The sparse versions subclass it and keep that layout, rather than converting to nn.Linear,
because Hugging Face code checks ``isinstance(module, Conv1D)`` (weight init, head pruning,
quantization) and reads ``module.weight`` as [in, out]: a sparsified model stays one HF code
accepts, its checkpoints keep HF's keys and shapes, and ``to_dense()`` gives back a plain Conv1D.
The sparse mixins see the weight through ``_rows`` (the [out, in] view) wherever the layout
matters (per-output thresholds, per-neuron gates); per-weight gates and masks use the stored layout.

transformers is optional: the classes are built on first use (``STRConv1D`` etc. are looked up
as module attributes, which pickling also does), and ``conv1d_type()`` is None until
``transformers.pytorch_utils`` has been imported (a model holding Conv1D layers has imported it).
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import Tensor, nn

from sparsekern.nn.gates import BETA, GAMMA, ZETA
from sparsekern.nn.l0_layers import _L0Mixin
from sparsekern.nn.masked import _MaskedMixin
from sparsekern.nn.str_layers import DEFAULT_S_INIT, _STRMixin

_NAMES = ("STRConv1D", "L0Conv1D", "MaskedConv1D")


def conv1d_type() -> type | None:
    """transformers' Conv1D class, or None when transformers is not imported."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    cls = conv1d_type()
    return cls is not None and isinstance(module, cls)


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Conv1D's forward: ``x @ weight + bias`` with weight [in, out]."""
    flat = x.reshape(-1, x.shape[-1])
    out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
    return out.view(x.shape[:-1] + (weight.shape[1],))


def _build() -> None:
    from transformers.pytorch_utils import Conv1D

    class _Conv1DLayout:
        dense_type = Conv1D

        def _init_conv1d(self, nf: int, nx: int, device, dtype) -> None:
            Conv1D.__init__(self, nf, nx)
            if device is not None or dtype is not None:
                nn.Module.to(self, device=device, dtype=dtype)

        def _rows(self, t: Tensor) -> Tensor:
            return t.t()

        _from_rows = _rows

        @classmethod
        def _dense_args(cls, layer: nn.Module) -> dict:
            return {"nf": layer.nf, "nx": layer.nx}

        def _new_dense(self, device, dtype) -> nn.Module:
            return Conv1D(self.nf, self.nx).to(device=device, dtype=dtype)

        def __repr__(self) -> str:  # Conv1D's own __repr__ would hide the sparse type
            return nn.Module.__repr__(self)

        def extra_repr(self) -> str:
            return f"nf={self.nf}, nx={self.nx}" + self._sparse_repr()

    class STRConv1D(_Conv1DLayout, _STRMixin, Conv1D):
        """Conv1D whose weight is ``soft_threshold(weight, s)``; ``s`` per layer or per output feature."""

        def __init__(self, nf: int, nx: int, *, s_init: float | None = DEFAULT_S_INIT, per_channel: bool = False,
                     device=None, dtype=None):
            self._init_conv1d(nf, nx, device, dtype)
            self._init_threshold(s_init, per_channel, {"device": device, "dtype": dtype})

        def forward(self, x: Tensor) -> Tensor:
            return conv1d(x, self.effective_weight(), self.bias)

        def _sparse_repr(self) -> str:
            return f", thresholds={self.s.numel()}"

    class L0Conv1D(_Conv1DLayout, _L0Mixin, Conv1D):
        """Conv1D with hard-concrete gates (granularity/mode as ``L0Linear``: ``in`` = per input feature)."""

        def __init__(self, nf: int, nx: int, *, granularity: str = "weight", mode: str = "weight",
                     drop_rate: float = 0.5, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA,
                     log_alpha_source: Callable[[], Tensor] | None = None, device=None, dtype=None):
            self._init_conv1d(nf, nx, device, dtype)
            self._init_l0(granularity, mode, drop_rate, beta, gamma, zeta, log_alpha_source,
                          {"device": device, "dtype": dtype})

        def forward(self, x: Tensor) -> Tensor:
            return self._gated_forward(x, conv1d, -1)

        def _sparse_repr(self) -> str:
            return f", granularity={self.granularity}, mode={self.mode}"

    class MaskedConv1D(_Conv1DLayout, _MaskedMixin, Conv1D):
        """Conv1D with a pruning mask (buffer ``mask``, all ones until GMP prunes)."""

        def __init__(self, nf: int, nx: int, *, device=None, dtype=None):
            self._init_conv1d(nf, nx, device, dtype)
            self._init_mask()

        def forward(self, x: Tensor) -> Tensor:
            return conv1d(x, self.effective_weight(), self.bias)

        def _sparse_repr(self) -> str:
            return ""

    for cls in (STRConv1D, L0Conv1D, MaskedConv1D):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls


def __getattr__(name: str):
    if name in _NAMES:
        _build()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sparse_conv1d_types() -> dict[str, type]:
    """{method: sparse Conv1D class} for ``sparsify`` (builds them; needs transformers)."""
    if "STRConv1D" not in globals():
        _build()
    return {"str": globals()["STRConv1D"], "l0": globals()["L0Conv1D"], "gmp": globals()["MaskedConv1D"]}
