"""Under inductor, the deterministic ops lower to their formulas, so inductor fuses them.

``soft_threshold``, ``hard_concrete_eval`` and ``l0_norm`` (and their backward ops) are
elementwise math and a reduction. As opaque custom ops in a compiled graph each costs a Python
dispatch (~15-25 us on CPU) and a separate pass over memory; as their reference formulas
(``sparsekern.reference``, SPEC 1-2) inductor generates one kernel for each and fuses it with its
neighbours, which is what ``torch.compile`` of a hand-written STR layer gets. The random ops
keep our kernels: their noise follows SPEC 4's Philox contract, which inductor's RNG does not.

Whatever backend is selected: inside an inductor graph these ops are inductor's kernels (the
same formulas; ``use_backend`` still picks the kernels of eager calls and of the random ops).
Other compilers (``aot_eager``, ``eager``, user backends) keep the custom ops. Graphs that
inductor cached before this lowering existed keep their custom-op calls: same results.

Registered lazily by the forward ops' fake kernels, which run only while a graph is traced:
importing inductor costs ~2 s, which ``import sparsekern`` should not pay.
"""
from __future__ import annotations

import threading

import torch

from sparsekern import reference

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


def _decomposition(formula, drops_backend: bool):
    def decompose(*args):
        return formula(*(args[:-1] if drops_backend else args))
    return decompose


def register() -> None:
    """Add the formulas to inductor's decomposition table (once per process)."""
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
        # inductor caches its table (with the random-op decompositions) on first use
        cached = getattr(decomposition, "fast_random_decomps", None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
        _registered = True
