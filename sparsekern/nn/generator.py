"""Dep-L0's gate generator (SPEC section 3): one MLP produces the log_alpha of every gated layer."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEPENDENCIES = ("forward", "backward")
LOG_ALPHA_BOUND = math.log(100.0)


class GateGenerator(nn.Module):
    """``log_alpha_l = c * tanh(Linear_l(log_alpha_{l-1}))`` from ``h_0 = ones``, c = log(100).

    ``widths``: channel count of each gated layer, in module (forward) order. ``dependency``
    "forward" chains them first to last; "backward" chains the reversed list and reverses
    the outputs, so ``outputs()[l]`` is always layer l's log_alpha. The buffer ``offset``, one
    value per output channel in module order (0 unless a final calibration set it), is added to
    the outputs, not fed along the chain. The first input width is the first chained layer's
    width (SPEC 3: 64 for VGG-16, 16 for ResNet-56), unless ``input_width`` is given.

    The chain runs once per training step: ``outputs()`` caches its result until a parameter
    changes (an optimizer step) or a backward pass has consumed it, so the step's gates and
    its penalty share one graph. ``source(l)`` is the ``log_alpha_source`` for layer l.
    """

    def __init__(self, widths, dependency: str = "forward", *, input_width: int | None = None, bias_mean: float = 3.0,
                 bias_std: float = 0.01, device=None, dtype=None):
        super().__init__()
        widths = list(widths) if isinstance(widths, (list, tuple)) else widths
        if not isinstance(widths, list) or not widths or any(
                isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"GateGenerator: widths must be a non-empty list of positive ints, got {widths!r}")
        if dependency not in DEPENDENCIES:
            raise ValueError(f"GateGenerator: dependency must be one of {DEPENDENCIES}, got {dependency!r}")
        self.widths, self.dependency = widths, dependency
        chain = widths if dependency == "forward" else widths[::-1]
        if input_width is not None and (isinstance(input_width, bool) or not isinstance(input_width, int)
                                        or input_width < 1):
            raise ValueError(f"GateGenerator: input_width must be a positive int, got {input_width!r}")
        self.input_width = chain[0] if input_width is None else input_width
        dims = [self.input_width] + chain
        self.layers = nn.ModuleList(nn.Linear(i, o, device=device, dtype=dtype) for i, o in zip(dims, dims[1:]))
        with torch.no_grad():
            for layer in self.layers:
                layer.bias.normal_(bias_mean, bias_std)
        # A shift per output channel: 0 in training, set by a final FLOPs/sparsity calibration.
        self.register_buffer("offset", torch.zeros(sum(widths), device=device, dtype=dtype))
        self._cache: tuple | None = None

    def forward(self) -> list[Tensor]:
        """A fresh pass of the chain: log_alpha per gated layer, in module order."""
        ref = self.layers[0].weight
        h = torch.ones(self.input_width, device=ref.device, dtype=ref.dtype)
        out = []
        for layer in self.layers:
            h = LOG_ALPHA_BOUND * torch.tanh(layer(h))
            out.append(h)
        if self.dependency == "backward":
            out = out[::-1]
        return [h + offset for h, offset in zip(out, self.offset.split(self.widths))]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "offset"
        if key in state_dict and state_dict[key].dim() == 0:  # checkpoints before per-channel offsets
            state_dict[key] = state_dict[key].expand(self.offset.shape).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _key(self) -> tuple:
        tensors = (*self.parameters(), *self.buffers())
        return (torch.is_grad_enabled(),) + tuple((t._version, t.data_ptr()) for t in tensors)

    def outputs(self) -> list[Tensor]:
        """The cached pass (recomputed after an optimizer step, a backward through it, or a grad-mode change)."""
        if torch.compiler.is_compiling():
            # Inside a compiled graph the pass is graph code: each gate traces its own copy (same
            # values and gradients), where the cache's Python state and hooks cannot be traced.
            return self()
        key = self._key()
        if self._cache is None or self._cache[0] != key:
            out = self()
            if out[0].requires_grad:
                # Once a backward reaches the outputs their graph is freed: the next use recomputes.
                for t in out:
                    t.register_hook(self._consumed)
            self._cache = (key, out)
        return self._cache[1]

    def _consumed(self, grad: Tensor) -> Tensor:
        self._cache = None
        return grad

    def source(self, index: int) -> "GeneratorOutput":
        if not 0 <= index < len(self.widths):
            raise IndexError(f"GateGenerator: layer index {index} out of range for {len(self.widths)} layers")
        return GeneratorOutput(self, index)

    def __getstate__(self):  # deepcopy / pickle: never carry a live autograd graph
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def extra_repr(self) -> str:
        return f"widths={self.widths}, dependency={self.dependency}"


class GeneratorOutput:
    """A picklable, deep-copyable ``log_alpha_source``: layer ``index`` of a generator's current pass."""

    def __init__(self, generator: GateGenerator, index: int):
        self.generator, self.index = generator, index

    def __call__(self) -> Tensor:
        return self.generator.outputs()[self.index]
