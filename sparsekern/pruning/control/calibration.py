"""Land a gated model on a target: keep the k best-placed gates, with k found by bisection.

The target controller (``constraint.DualLambda``; ``TargetLambda`` for the L0 paper recipe)
steers training towards the target, but gates open and close in steps, and a Dep-L0 generator saturates (its outputs sit at +-log 100, where a
common shift of log_alpha cannot separate them), so training can miss by several points.

The calibration puts all gates in one keep order and keeps a prefix of it. Two orders:
- ``"global"``: by log_alpha across all layers (each layer's best gate first). Independent
  gates were trained against the same prior and penalty, so their log_alphas compare across
  layers: the least wanted gates anywhere close first.
- ``"per_layer"``: keeps what training learned about each layer's width. To prune more, every
  layer closes the same fraction of its open gates (lowest log_alpha first); to prune less,
  every layer reopens the same fraction of its closed gates (highest first). A generator's
  outputs do not compare across layers (a saturated layer sits at one value), and ranking them
  globally empties whole layers: on LeNet-300 at 25% FLOPs, Dep-L0 kept 85-1 hidden units.
``"auto"`` (the default) takes per_layer when a generator feeds any gate, else global. Each
layer keeps at least one gate. The measured pruned fraction falls as more of the order is
kept, so bisection finds the count closest to the target. Where the gate at the boundary is
expensive (one LeNet-5 conv1 map is ~4% of the FLOPs), later, cheaper gates are added one at
a time while each brings the value closer.

Only gates whose decision changes move. A closed gate that is kept gets the log_alpha of eval
gate 0.5 (a gate just above the threshold would count as FLOPs yet pass almost no signal);
an open gate that is dropped gets log_alpha ``log 0.01`` (the reference code's lower bound)
or less, so its eval gate is 0. Own log_alpha parameters are edited in place, a generator's
outputs through its per-channel ``offset``.
"""
from __future__ import annotations

import bisect
import itertools
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


ORDERS = ("auto", "global", "per_layer")
FILL_TOLERANCE = 0.002  # a landing this close (0.2 points) needs no gate-by-gate fill
FILL_TRIALS = 256  # at most this many single gates tried (one measure() each)


def _per_layer_score(log_alpha: Tensor, open_: Tensor) -> Tensor:
    """Open gates in (1, 2], closed ones in (0, 1], by their log_alpha's rank among the layer's
    open (closed) gates as a fraction: across layers, equal fractions interleave."""
    score = torch.empty_like(log_alpha)
    for group, base in ((open_, 1.0), (~open_, 0.0)):
        index = group.nonzero().flatten()
        if index.numel():
            order = index[log_alpha[index].argsort(stable=True)]  # lowest first
            score[order] = base + torch.arange(1, index.numel() + 1, dtype=score.dtype) / index.numel()
    return score


def _score(gates: _Gates, order: str) -> Tensor:
    """A layer's gates' places in the keep order (higher: kept first); its best gate +inf."""
    log_alpha = gates.log_alpha.float().cpu()
    score = log_alpha.clone() if order == "global" else _per_layer_score(log_alpha, gates.open.cpu())
    score[score.argmax()] = math.inf
    return score


@torch.no_grad()
def calibrate_gates(model: nn.Module, measure, target: float, *, order: str = "auto", fill: bool = True) -> float:
    """Keep the first k gates of the keep ``order`` (module docstring), with the k whose
    ``measure()`` (pruned fraction, falling as k grows) is closest to ``target``, then (``fill``)
    add cheaper later gates one by one. Returns the measured value."""
    if order not in ORDERS:
        raise ValueError(f"calibrate_gates: order must be one of {ORDERS}, got {order!r}")
    groups = [_Gates(m) for m in model.modules() if isinstance(m, HardConcreteGates)]
    if not groups:
        raise ValueError("calibrate_gates: the model has no hard-concrete gates")
    if order == "auto":
        order = "per_layer" if any(g.module.log_alpha_source is not None for g in groups) else "global"
    scores = [_score(g, order) for g in groups]
    sizes = [s.numel() for s in scores]
    sequence = torch.cat(scores).argsort(descending=True, stable=True)  # gates, first kept first
    rank = torch.empty_like(sequence)
    rank[sequence] = torch.arange(sequence.numel())
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
    if not fill or abs(values[best] - target) <= FILL_TOLERANCE or values[low] <= target:
        return keep_top(best)
    # One gate at the boundary can cost more than the tolerance (a LeNet-5 conv1 map is ~4% of
    # the FLOPs): from the prefix that prunes too much, also keep later gates, one at a time,
    # while each brings the measured value closer to the target from that side.
    value = keep_top(low)
    keeps = [r < low for r in ranks]
    starts = list(itertools.accumulate(sizes, initial=0))
    for position in sequence[low:low + FILL_TRIALS].tolist():
        if abs(value - target) <= FILL_TOLERANCE:
            break
        i = bisect.bisect_right(starts, position) - 1
        keeps[i][position - starts[i]] = True
        groups[i].set(keeps[i])
        tried = float(measure())
        # closer, and not past the target by more than the tolerance (an expensive gate that
        # lands on the other side would stop the fill there)
        if tried >= target - FILL_TOLERANCE and abs(tried - target) < abs(value - target):
            value = tried
        else:
            keeps[i][position - starts[i]] = False
            groups[i].set(keeps[i])
    return keep_top(high) if abs(values[high] - target) < abs(value - target) else value
