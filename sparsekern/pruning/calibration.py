"""Land a gated model on a target: keep the k best-ranked gates, with k found by bisection.

The lambda controller (``TargetLambda``) steers training towards the target, but gates open
and close in steps, and a Dep-L0 generator saturates (its outputs sit at +-log 100, where a
common shift cannot separate them), so the last step can miss by several points. The final
calibration ranks every gate by its log_alpha, each layer's best gate first (no layer is closed
entirely), keeps the top k and closes the rest. The measured pruned fraction falls as k grows,
so bisection finds the k that lands closest to the target, to one gate.

Only gates whose decision changes move. A closed gate that is kept gets the log_alpha of eval
gate 0.5 (a gate just above the threshold would count as FLOPs yet pass almost no signal);
an open gate that is dropped gets log_alpha ``log 0.01`` (the reference code's lower bound)
or less, so its eval gate is 0. Own log_alpha parameters are edited in place, a generator's
outputs through its per-channel ``offset``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparsekern.nn import GeneratorOutput, HardConcreteGates
from sparsekern.nn.gates import LOG_ALPHA_RANGE


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class _Gates:
    """One module's gates: log_alpha before calibration, and how to set a new one."""

    def __init__(self, module: HardConcreteGates):
        self.module = module
        source = module.log_alpha_source
        if source is not None and not isinstance(source, GeneratorOutput):
            raise ValueError(f"calibrate_gates: cannot calibrate gates whose log_alpha comes from "
                             f"{type(source).__name__}; only own log_alpha or a GateGenerator")
        self.log_alpha = module.gate_log_alpha().detach().reshape(-1).clone()
        self.open = module.kept().reshape(-1)
        gamma, zeta = module.gamma, module.zeta
        self.opened_value = _logit((0.5 - gamma) / (zeta - gamma))  # eval gate 0.5
        self.closed_value = min(LOG_ALPHA_RANGE[0], _logit(-gamma / (zeta - gamma)) - 1.0)
        if source is not None:
            start = sum(source.generator.widths[:source.index])
            self.offset = source.generator.offset[start:start + self.log_alpha.numel()]
            self.offset_before = self.offset.clone()

    def set(self, keep: Tensor) -> None:
        la = self.log_alpha
        new = torch.where(keep & ~self.open, la.clamp(min=self.opened_value), la)
        new = torch.where(~keep & self.open, la.clamp(max=self.closed_value), new)
        source = self.module.log_alpha_source
        if source is None:
            self.module.log_alpha.copy_(new.view_as(self.module.log_alpha))
        else:  # generated: this output's slice of the offset moves by the change
            self.offset.copy_(self.offset_before + (new - la))


@torch.no_grad()
def calibrate_gates(model: nn.Module, measure, target: float) -> float:
    """Keep the top-k gates (module docstring) with the k whose ``measure()`` (pruned fraction,
    falling as k grows) is closest to ``target``. Returns the measured value."""
    groups = [_Gates(m) for m in model.modules() if isinstance(m, HardConcreteGates)]
    if not groups:
        raise ValueError("calibrate_gates: the model has no hard-concrete gates")
    scores = []
    for g in groups:
        s = g.log_alpha.float().clone()
        s[s.argmax()] = math.inf  # each layer's best gate is kept first
        scores.append(s)
    sizes = [s.numel() for s in scores]
    order = torch.cat([s.cpu() for s in scores]).argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    ranks = [r.to(g.log_alpha.device) for g, r in zip(groups, rank.split(sizes))]

    def keep_top(k: int) -> float:
        for g, r in zip(groups, ranks):
            g.set(r < k)
        return float(measure())

    low, high = len(groups), sum(sizes)  # every layer keeps a gate; at most all are kept
    values = {low: keep_top(low)}
    if values[low] > target:  # bisect for the smallest k that prunes no more than the target
        while high - low > 1:
            mid = (low + high) // 2
            values[mid] = keep_top(mid)
            if values[mid] > target:
                low = mid
            else:
                high = mid
        if high not in values:
            values[high] = keep_top(high)
    best = min(values, key=lambda k: (abs(values[k] - target), k))
    return keep_top(best)
