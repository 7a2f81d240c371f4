"""Direct torch.ops calls with a wrong parameter count or grad shape: one-line errors from the
checks the CPU and CUDA bindings share (csrc/op_checks.h). tests/cuda_emulation runs the same
calls on the CUDA binding and expects the same messages."""
from __future__ import annotations

import pytest
import torch

from sparsekern import _extension

HC = (2.0 / 3.0, -0.1, 1.1)
SEED = (5, 7)


def _r(*shape):
    return torch.randn(*shape)


def _noise():
    return torch.tensor(SEED, dtype=torch.int64)


# (op, arguments, message): each call breaks one rule.
BAD_CALLS = [
    ("soft_threshold", lambda: (_r(4, 3), _r(3)),
     r"^soft_threshold: s must have 1 or weight.shape\[0\] elements, got \[3\]"),
    ("soft_threshold_backward", lambda: (_r(4, 3), _r(4, 3), _r(5)), r"^soft_threshold_backward: s must have 1 or"),
    ("soft_threshold_backward", lambda: (_r(4, 2), _r(4, 3), _r(4)),
     r"^soft_threshold_backward: grad and weight shapes differ"),
    ("hard_concrete_backward", lambda: (_r(5), _r(4), *SEED, *HC),
     r"^hard_concrete_backward: grad and log_alpha shapes differ"),
    ("hard_concrete_eval_backward", lambda: (_r(3), _r(4), *HC[1:]),
     r"^hard_concrete_eval_backward: grad and log_alpha shapes differ"),
    ("l0_norm_backward", lambda: (_r(2), _r(4), *HC), r"^l0_norm_backward: grad must have one element, got \[2\]"),
    ("gated_weight", lambda: (_r(4, 3), _r(5), *SEED, *HC),
     r"^gated_weight: log_alpha must have weight.numel\(\), weight.shape\[0\] or 1 elements, got \[5\]"),
    ("gated_weight_backward", lambda: (_r(4, 3), _r(4, 3), _r(2, 3), *SEED, *HC),
     r"^gated_weight_backward: log_alpha must have weight.numel\(\)"),
    ("gated_weight_backward", lambda: (_r(4, 2), _r(4, 3), _r(4), *SEED, *HC),
     r"^gated_weight_backward: grad and weight shapes differ"),
    ("gated_activation", lambda: (_r(2, 5, 3), _r(4), *SEED, *HC),
     r"^gated_activation: log_alpha must have x.shape\[1\] elements, got \[4\]"),
    ("gated_activation", lambda: (_r(5), _r(5), *SEED, *HC),
     r"^gated_activation: x must have shape \[B, C, ...\], got \[5\]"),
    ("gated_activation_backward", lambda: (_r(2, 5), _r(2, 5, 3), _r(5), *SEED, *HC),
     r"^gated_activation_backward: grad and x shapes differ"),
    ("hard_concrete_at_backward", lambda: (_r(3), _r(4), _noise(), *HC),
     r"^hard_concrete_backward: grad and log_alpha shapes differ"),
    ("gated_weight_at", lambda: (_r(4, 3), _r(5), _noise(), *HC), r"^gated_weight: log_alpha must have weight.numel"),
    ("gated_activation_at_backward", lambda: (_r(2, 5), _r(2, 5, 3), _r(5), _noise(), *HC),
     r"^gated_activation_backward: grad and x shapes differ"),
]
IDS = [f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_CALLS)]


def assert_one_line_error(ops, op, args, message):
    with pytest.raises(RuntimeError, match=message) as info:
        getattr(ops, op)(*args())
    assert len(str(info.value).strip().splitlines()) == 1, str(info.value)


@pytest.mark.skipif(not _extension.compiled_available(), reason="needs the compiled extension")
@pytest.mark.parametrize("op, args, message", BAD_CALLS, ids=IDS)
def test_cpu_binding_rejects(op, args, message):
    assert_one_line_error(torch.ops.sparsekern_C, op, args, message)
