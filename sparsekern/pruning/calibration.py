"""Land a gated model on a target: one common shift of every gate's log_alpha, found by bisection.

The lambda controller (``TargetLambda``) steers training towards the target, but gates open and
close in steps, so the last step can miss it. Like ``TargetSparsity.calibrate`` for STR, this
shifts every log_alpha by the same delta (a Dep-L0 generator through its ``offset``), closing
or opening first the gates nearest the threshold, until the measured pruned fraction is the
closest to ``target`` it can be. The shift is at most ``span``: it fixes the last step's miss,
not a controller far off (a large common shift moves every gate, e.g. all of a saturated
Dep-L0 generator's outputs at once).
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekern.nn import GateGenerator, HardConcreteGates


@torch.no_grad()
def shift_gates(model: nn.Module, delta: float) -> None:
    """Add ``delta`` to every gate's log_alpha (a generator's output ``offset`` for generated gates)."""
    for module in model.modules():
        if isinstance(module, GateGenerator):
            module.offset.add_(delta)
        elif isinstance(module, HardConcreteGates) and module.log_alpha is not None:
            module.log_alpha.add_(delta)


def calibrate_gates(model: nn.Module, measure, target: float, *, span: float = 3.0, iterations: int = 40) -> float:
    """Shift the gates so ``measure()`` (pruned fraction, which grows as the shift decreases) is
    as close to ``target`` as bisection over [-span, span] finds. Returns the measured value."""
    applied = 0.0
    best = (abs(measure() - target), 0.0)
    low, high = -span, span
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        shift_gates(model, mid - applied)
        applied = mid
        value = measure()
        best = min(best, (abs(value - target), mid))
        if value < target:  # not pruned enough: shift down
            high = mid
        else:
            low = mid
    shift_gates(model, best[1] - applied)
    return measure()
