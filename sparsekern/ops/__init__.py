"""The public ops, and how each call reaches a kernel.

``soft_threshold``, ``hard_concrete``, ``hard_concrete_eval``, ``l0_norm``, ``gated_weight``,
``gated_activation`` and ``uniform`` check their arguments (``checks``), pick the backend for the
tensors' device and dtype (``sparsekern.backends``), then take one of four paths:

| the call | path | module |
| --- | --- | --- |
| eager, ``cpu``/``cuda`` backend, plain tensors | ``torch.ops.sparsekern_C.<op>``, autograd in C++ (no Python dispatch) | ``fast_path`` |
| eager, ``torch``/``triton`` backend (float64 on CUDA too), tensor subclasses, functorch transforms, dispatch modes | the ``sparsekern::<op>`` custom op, whose body and backward call the backend's kernels | ``custom_ops`` |
| the gate ops with ``seed`` a noise tensor ``[seed, offset]`` (the layers' ``noise_state``), eager or traced | ``sparsekern::<op>_at``: on ``cpu``/``cuda``/``triton`` the kernel reads the counter itself; ``torch`` takes it as device scalars on CUDA (no sync), host ints on the CPU | ``noise`` |
| ``torch.compile`` with inductor | deterministic ops lower to their formulas (inductor fuses them); ``<op>_at`` calls ``sparsekern_C::<op>_at`` on ``cpu``/``cuda``, its ``_any`` copy otherwise; with ``set_inductor_gates("decompose")`` on ``cpu`` (float32 math) it lowers to the kernels' integer and float operations as tensor ops, which inductor fuses; backend and lowering fixed at compile time | ``inductor``, ``gate_decomposition`` |
| other ``torch.compile`` backends (``aot_eager``, ...) | the custom ops, as traced | ``custom_ops``, ``noise`` |
| CUDA graphs | layers pass their ``noise_state`` while a capture is under way (``nn.base``), so ``<op>_at`` runs: the counter is read in device memory (``cuda``, ``triton``; ``torch`` computes on the device scalars), each replay draws new noise | ``noise`` |

``dispatch`` holds the backend choice shared by all paths. Every path runs the same kernels on the
same saved inputs: the same numbers (docs/math.md).
"""
from sparsekern.ops.api import (
    gated_activation,
    gated_weight,
    hard_concrete,
    hard_concrete_eval,
    l0_norm,
    soft_threshold,
    uniform,
)
from sparsekern.ops.dispatch import BETA, GAMMA, ZETA
from sparsekern.ops.inductor import set_inductor_gates
from sparsekern.ops.noise import take_noise

__all__ = ["BETA", "GAMMA", "ZETA", "gated_activation", "gated_weight", "hard_concrete", "hard_concrete_eval",
           "l0_norm", "set_inductor_gates", "soft_threshold", "take_noise", "uniform"]
