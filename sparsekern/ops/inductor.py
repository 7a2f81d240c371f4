"""Under inductor, the deterministic ops lower to their formulas, so inductor fuses them, and
the gate-sampling ops call the compiled kernels without the Python dispatch around them.

``soft_threshold``, ``hard_concrete_eval`` and ``l0_norm`` (and their backward ops) are
elementwise math and a reduction. As opaque custom ops in a compiled graph each costs a Python
dispatch (~15-25 us on CPU) and a separate pass over memory; as their reference formulas
(``sparsekern.backends.reference``, SPEC 1-2) inductor generates one kernel for each and fuses it with its
neighbours, which is what ``torch.compile`` of a hand-written STR layer gets. The random ops
keep our kernels: their noise follows SPEC 4's Philox contract, which inductor's RNG does not.
In a compiled graph they appear as ``sparsekern::<op>_at`` (noise in a tensor, see
``sparsekern.ops.noise``), whose custom-op dispatch costs ~12 us per call around the kernel; on
the ``cpu``/``cuda`` backends the graph calls ``sparsekern_C::<op>_at`` (and its backward)
directly: the same kernels, so the same bits. Other backends get ``<op>_at_any``, a copy of
the custom op that inductor leaves alone. The backend of these calls is the one selected when
the graph is compiled.

``set_inductor_gates("decompose")`` (or ``SPARSEKERN_INDUCTOR_GATES=decompose``) lowers the
gate ops of the ``cpu`` backend instead to ``gate_decomposition``: the Philox stream and the
hard-concrete math as int64/float32 tensor ops with the kernels' bits, which inductor compiles
into the kernels around them (fusion) and regenerates in the backward. Measured in
bench/README.md ("Inductor gate lowering"), which also says why the default stays ``kernel``.
float64 and CUDA keep the kernels (CUDA: no device to check the bits on when this was written).

Whatever backend is selected, inside an inductor graph the deterministic ops are inductor's
kernels (the same formulas; ``use_backend`` still picks the kernels of eager calls). Other
compilers (``aot_eager``, ``eager``, user backends) keep the custom ops. Graphs that inductor
cached before this lowering existed keep their custom-op calls: same results.

Registered lazily by the forward ops' fake kernels, which run only while a graph is traced:
importing inductor costs ~2 s, which ``import sparsekern`` should not pay.
"""
from __future__ import annotations

import os
import threading

import torch

from sparsekern.backends import extension, reference
from sparsekern.ops import fast_path, gate_decomposition
from sparsekern.ops.dispatch import GATE_DATA_ARGS, backend_name

# custom op name -> reference function; backward ops drop their trailing ``backend`` argument
_FORMULAS = {
    "soft_threshold": (reference.soft_threshold, False),
    "soft_threshold_backward": (reference.soft_threshold_backward, True),
    "hard_concrete_eval": (reference.hard_concrete_eval, False),
    "hard_concrete_eval_backward": (reference.hard_concrete_eval_backward, True),
    "l0_norm": (reference.l0_norm, False),
    "l0_norm_backward": (reference.l0_norm_backward, True),
}
_lock = threading.Lock()
_registered = False

GATE_LOWERINGS = ("decompose", "kernel")
_ENV = "SPARSEKERN_INDUCTOR_GATES"
_gate_lowering: str | None = None  # None: the environment's choice, else DEFAULT_GATE_LOWERING
DEFAULT_GATE_LOWERING = "kernel"


def set_inductor_gates(lowering: str | None) -> None:
    """How graphs compiled from now on run the gate ops on the ``cpu`` backend: ``"decompose"``
    (tensor ops inductor fuses, ``gate_decomposition``) or ``"kernel"`` (our compiled kernel);
    ``None``: the ``SPARSEKERN_INDUCTOR_GATES`` environment variable, else the default. Dynamo
    guards on the choice (``api._sample`` reads it while tracing), so compiled functions recompile
    at their next call; inductor's on-disk cache may still return a graph compiled with the other
    lowering: the same numbers either way."""
    global _gate_lowering
    if lowering is not None and lowering not in GATE_LOWERINGS:
        raise ValueError(f"set_inductor_gates: lowering must be one of {GATE_LOWERINGS} or None, got {lowering!r}")
    _gate_lowering = lowering


def lowering_choice() -> str | None:
    """What ``set_inductor_gates`` last set. The ops read it while dynamo traces them, so dynamo
    guards on it: a change recompiles the graphs that call a gate op with a noise tensor."""
    return _gate_lowering


def inductor_gates() -> str:
    """The gate lowering a graph traced now gets (see ``set_inductor_gates``)."""
    if _gate_lowering is not None:
        return _gate_lowering
    chosen = os.environ.get(_ENV, "") or DEFAULT_GATE_LOWERING
    if chosen not in GATE_LOWERINGS:
        raise ValueError(f"{_ENV} must be one of {GATE_LOWERINGS}, got {chosen!r}")
    return chosen


def _decomposes(backend: str, tensors) -> bool:
    """The decomposition reproduces the ``cpu`` kernels' float32 math (not float64: libm there)."""
    return (backend == "cpu" and inductor_gates() == "decompose"
            and all(t.device.type == "cpu" and t.dtype != torch.float64 for t in tensors))


def _decomposition(formula, drops_backend: bool):
    def decompose(*args):
        return formula(*(args[:-1] if drops_backend else args))
    return decompose


def _gate_call(name: str, n: int, backward: bool):
    """``sparsekern::<name>_at[_backward]`` (``n`` data tensors): the compiled op on a compiled
    backend, else the ``_any`` copy of the custom op."""
    suffix = "_at_backward" if backward else "_at"
    any_backend = getattr(torch.ops.sparsekern, f"{name}{suffix}_any").default
    compiled = getattr(torch.ops.sparsekern_C, name + suffix).default if extension.compiled_available() else None
    formula = (gate_decomposition.BACKWARD if backward else gate_decomposition.FORWARD)[name]

    def decompose(*args):
        if backward:  # (grad, *data, noise, *hc, backend): the forward's backend, fixed at trace time
            lead, data, (noise, *hc), backend = args[:1], args[1:1 + n], args[1 + n:-1], args[-1]
        else:
            lead, data, (noise, *hc) = (), args[:n], args[n:]
            backend = backend_name(*data)
        if compiled is None or backend not in fast_path.BACKENDS:
            return any_backend(*args)
        if _decomposes(backend, lead + data):
            return formula(*lead, *data, noise, *hc)
        # contiguous, as the custom op passes them: the compiled op's outputs are contiguous
        return compiled(*(t.contiguous() for t in lead + data), noise.contiguous(), *hc)
    return decompose


def register() -> None:
    """Add the formulas and the gate calls to inductor's decomposition table (once per process)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        try:
            # Called from a fake kernel: no fake/proxy mode may see the tensors inductor makes at import.
            with torch.utils._python_dispatch._disable_current_modes():
                from torch._inductor import decomposition
        except ImportError:  # no inductor in this torch build: nothing to lower to
            _registered = True
            return
        table = decomposition.decompositions
        for name, (formula, drops_backend) in _FORMULAS.items():
            table[getattr(torch.ops.sparsekern, name).default] = _decomposition(formula, drops_backend)
        for name, data in GATE_DATA_ARGS.items():
            for backward in (False, True):
                op = getattr(torch.ops.sparsekern, name + ("_at_backward" if backward else "_at")).default
                table[op] = _gate_call(name, len(data), backward)
        # inductor caches its table (with the random-op decompositions) on first use
        cached = getattr(decomposition, "fast_random_decomps", None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
        _registered = True
