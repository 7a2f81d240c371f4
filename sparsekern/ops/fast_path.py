"""The eager fast path: public ops call ``torch.ops.sparsekern_C`` straight away.

The compiled ops carry their own autograd (csrc/autograd.cpp), so in eager mode on the
``cpu``/``cuda`` backends one dispatcher call does what the ``sparsekern::<op>`` custom op
does through its Python dispatch (~12 us per call around a ~2 us kernel on a 1K tensor).
The custom ops stay for everything else: ``torch.compile`` tracing, the ``torch`` and
``triton`` backends, functorch transforms, dispatch modes (make_fx, FakeTensorMode,
FlopCounterMode) and tensor subclasses (fake tensors, DTensor, ...), whose handlers know the
custom ops. Same kernels, same saved inputs, same backward kernel: the same numbers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sparsekern.backends import extension

_PLAIN = (Tensor, torch.nn.Parameter)
BACKENDS = ("cpu", "cuda")
ENABLED = True  # False sends every call through the custom ops (tests and bench/call_latency.py compare)
OPS = None
if extension.compiled_available():
    _lib = torch.ops.sparsekern_C
    # The overloads themselves: calling them skips the packet's overload lookup.
    OPS = {name: getattr(_lib, name).default for name in (
        "soft_threshold", "hard_concrete", "hard_concrete_eval", "l0_norm", "gated_weight", "gated_activation")}
    _uniform_out = _lib.uniform.default
    # The CPU uniform stream as a plain binding: no dispatcher, no Python-side allocation.
    from sparsekern._C import uniform_cpu  # noqa: F401  (ops.api calls fast_path.uniform_cpu)


def uniform(numel: int, seed: int, offset: int, device: torch.device) -> Tensor:
    """The compiled uniform stream; seed/offset as the int64 bits of their uint64 values
    (on CPU, ``uniform_cpu`` does the same without the dispatcher)."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    _uniform_out(out, seed, offset)
    return out


def eligible(*tensors: Tensor) -> bool:
    """Whether this call may take the fast path, before the backend is resolved."""
    if (not ENABLED or OPS is None or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack()):
        return False
    for t in tensors:
        if type(t) not in _PLAIN:
            return False
    return True
