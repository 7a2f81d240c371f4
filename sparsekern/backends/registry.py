"""Backend registry: which implementation of the kernels runs for a tensor.

Names: ``torch`` (pure-PyTorch reference), ``cpu`` and ``cuda`` (the compiled
extension), ``triton``; ``auto`` picks the fastest available one for the
tensor's device. Choose with ``use_backend(name)`` or ``SPARSEKERN_BACKEND``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from types import ModuleType

import torch

from sparsekern.backends import extension

NAMES = ("torch", "cpu", "cuda", "triton")
_MODULES = {
    "torch": "sparsekern.backends.reference",
    "cpu": "sparsekern.backends.compiled",
    "cuda": "sparsekern.backends.compiled",
    "triton": "sparsekern.backends.triton.backend",
}


class _State(threading.local):
    name: str | None = None  # a class default: reading it never raises AttributeError (slow)


_state = _State()


def _check_name(name: str, where: str) -> str:
    if name not in NAMES + ("auto",):
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {', '.join(NAMES + ('auto',))}")
    return name


def _default() -> str:
    return _check_name(os.environ.get("SPARSEKERN_BACKEND", "auto").strip() or "auto", "SPARSEKERN_BACKEND")


def current_backend() -> str:
    """The selected backend name (may be ``auto``)."""
    return _state.name or _default()


@functools.lru_cache(maxsize=None)
def triton_interpreted() -> bool:
    """Read once, like Triton itself, which fixes the mode when its kernels are defined."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def is_available(name: str) -> bool:
    _check_name(name, "is_available")
    return _available(name, triton_interpreted())


@functools.lru_cache(maxsize=None)
def _available(name: str, interpreted: bool) -> bool:
    """Cached: every op call resolves a backend, and none of this changes within a process."""
    if name in ("torch", "auto"):
        return True
    if name == "cpu":
        return extension.compiled_has("CPU")
    if name == "cuda":
        return torch.cuda.is_available() and extension.compiled_has("CUDA")
    return _triton_importable() and (torch.cuda.is_available() or interpreted)


def available_backends() -> list[str]:
    """Backends usable in this process, in the order ``auto`` prefers them."""
    return [n for n in ("cuda", "triton", "cpu", "torch") if is_available(n)]


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the ``with`` block on backend ``name``."""
    _check_name(name, "use_backend")
    if not is_available(name):
        raise ValueError(f"use_backend: backend {name!r} is not available here (available: {available_backends()})")
    previous = _state.name
    _state.name = name
    try:
        yield name
    finally:
        _state.name = previous


def _supports(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if backend `name` can run on (device, dtype), else the reason it cannot."""
    if name == "torch":
        return None
    if name == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got {device.type}"
    if dtype == torch.float64:
        return "it supports float32/float16/bfloat16, got float64 (use 'torch' or 'cpu')"
    if name == "cuda":
        return None if device.type == "cuda" else f"it runs on CUDA tensors, got {device.type}"
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
        return None
    return f"it runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device.type}"


_RESOLVED: dict[tuple, str] = {}
# os.environ.get costs ~0.7 us per call (it encodes the key, and raises and catches KeyError when
# the variable is unset). Every os.environ write updates the mapping it wraps, so a lookup there
# sees the same value at a tenth of the cost; the raw value is only a cache key.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("SPARSEKERN_BACKEND") if _ENV_DATA is not None else None


def _env_selection():
    if _ENV_DATA is None:
        return os.environ.get("SPARSEKERN_BACKEND")
    return _ENV_DATA.get(_ENV_KEY)


def resolve_name(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend that runs for a tensor on `device` with `dtype`."""
    # Every op call comes here: one dict lookup keyed by the raw selection, without parsing
    # the environment variable or building device.type (a miss validates; errors are not cached).
    selected = _state.name  # the environment variable only counts outside use_backend()
    key = (selected, None if selected else _env_selection(), device, dtype, triton_interpreted())
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _resolve(current_backend(), device.type, dtype, triton_interpreted())
    return name


@functools.lru_cache(maxsize=None)
def _resolve(name: str, device_type: str, dtype: torch.dtype, interpreted: bool) -> str:
    """Cached by (selection, device type, dtype): every op call resolves (errors are not cached)."""
    device = torch.device(device_type)
    if name == "auto":
        for candidate in available_backends():
            if _supports(candidate, device, dtype) is None and (candidate != "triton" or device.type == "cuda"):
                return candidate
        return "torch"
    why = _supports(name, device, dtype)
    if why is not None:
        raise ValueError(f"backend {name!r} cannot run this op: {why}")
    if not is_available(name):
        raise ValueError(f"backend {name!r} (from SPARSEKERN_BACKEND) is not available here (available: {available_backends()})")
    return name


@functools.lru_cache(maxsize=None)
def module(name: str) -> ModuleType:
    """The kernels of a concrete backend (not ``auto``)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(_MODULES[name])


def resolve(device: torch.device, dtype: torch.dtype = torch.float32) -> ModuleType:
    return module(resolve_name(device, dtype))
