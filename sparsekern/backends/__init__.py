"""The kernels and the registry that picks them (the bottom layer: it imports nothing else of sparsekern).

| module | what |
| --- | --- |
| ``registry`` | backend names, ``use_backend``, resolution per device and dtype (``auto``) |
| ``reference`` | the ``torch`` backend: pure-PyTorch formulas, the contract every backend implements |
| ``extension`` | loads ``sparsekern._C`` (``torch.ops.sparsekern_C``); warns once if it is missing |
| ``compiled`` | the ``cpu`` and ``cuda`` backends on ``torch.ops.sparsekern_C``, and its fake kernels |
| ``triton`` | the ``triton`` backend |
"""
from sparsekern.backends import extension
from sparsekern.backends.registry import (
    NAMES,
    available_backends,
    current_backend,
    is_available,
    module,
    resolve,
    resolve_name,
    triton_interpreted,
    use_backend,
)

if extension.compiled_available():
    from sparsekern.backends import compiled  # noqa: F401  (registers the fake kernels of sparsekern_C)

__all__ = ["NAMES", "available_backends", "current_backend", "is_available", "module", "resolve", "resolve_name",
           "triton_interpreted", "use_backend"]
