"""Land a gated model on a target: keep the k best-placed gates, with k found by bisection.

The lambda controller (``TargetLambda``) steers training towards the target, but gates open
and close in steps, and a Dep-L0 generator saturates (its outputs sit at +-log 100, where a
common shift of log_alpha cannot separate them), so training can miss by several points.

The calibration keeps what training learned: which gates are open, and so how wide each layer
is. To prune more, every layer closes the same fraction of its open gates, those with the
lowest log_alpha first; to prune less, every layer reopens the same fraction of its closed
gates, highest log_alpha first. (Ranking all gates by log_alpha across layers would instead
empty whole layers whose log_alphas happen to sit lower, e.g. a saturated generator's.) Each
layer keeps at least its best gate. That order is a ranking of all gates; the measured pruned
fraction falls as more of it is kept, so bisection finds the count closest to the target, to
one gate.

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


def _placement(log_alpha: Tensor, open_: Tensor) -> Tensor:
    """Where each gate of a layer stands in the keep order: open gates in (1, 2], closed ones in
    (0, 1], by their log_alpha's rank among the layer's open (closed) gates as a fraction; the
    layer's best gate +inf. Across layers, equal fractions interleave."""
    score = torch.empty_like(log_alpha)
    for group, base in ((open_, 1.0), (~open_, 0.0)):
        index = group.nonzero().flatten()
        if index.numel():
            order = index[log_alpha[index].argsort(stable=True)]  # lowest first
            score[order] = base + torch.arange(1, index.numel() + 1, dtype=score.dtype) / index.numel()
    score[score.argmax()] = math.inf
    return score


@torch.no_grad()
def calibrate_gates(model: nn.Module, measure, target: float) -> float:
    """Keep the first k gates of the keep order (module docstring), with the k whose
    ``measure()`` (pruned fraction, falling as k grows) is closest to ``target``. Returns the
    measured value."""
    groups = [_Gates(m) for m in model.modules() if isinstance(m, HardConcreteGates)]
    if not groups:
        raise ValueError("calibrate_gates: the model has no hard-concrete gates")
    scores = [_placement(g.log_alpha.float().cpu(), g.open.cpu()) for g in groups]
    sizes = [s.numel() for s in scores]
    order = torch.cat(scores).argsort(descending=True, stable=True)
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
