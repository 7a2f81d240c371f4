"""The expected-L0 penalties of a model's hard-concrete gates (docs/math.md sections 2 and 3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsekern.pruning.surgery.channel_gating import chained_gates, measure_positions
from sparsekern.pruning.surgery.flops import record_flops_per_weight
from sparsekern.pruning.surgery.modules import gate_modules
from sparsekern.pruning.defaults import L0_LAMBDA

COSTS = ("weights", "flops")
P_CLAMP = 1e-6  # the reference code's clamp of P(z != 0) in the penalty


def _expected_channels(gate, clamp: bool) -> Tensor:
    p = gate.open_probability()
    return (p.clamp(P_CLAMP, 1 - P_CLAMP) if clamp else p).sum()


def coupled_penalty(gates, lam: float, cost: str = "weights", clamp: bool = False) -> Tensor:
    """Dep-L0's chain (SPEC 3): ``sum_l lam * k_l^2 * E[C_{l-1}] * E[C_l]`` over ``gates`` in order,
    ``E[C_0]`` the first layer's input channels; ``cost="flops"`` multiplies term l by its output
    H*W. The gradient reaches both gates of every term."""
    total, previous = None, None
    for gate in gates:
        link = gate.chain
        if previous is None:
            previous = torch.tensor(float(link.in_channels), device=gate.gate_log_alpha().device)
        current = _expected_channels(gate, clamp)
        if cost == "flops" and link.positions is None:
            raise ValueError("regularization: cost='flops' needs example_input (once) to measure the "
                             "output H*W of the gated layers")
        term = lam * link.term(previous, current, cost == "flops")
        total = term if total is None else total + term
        previous = current
    return total


def regularization(model: nn.Module, *, num_samples: int | None = None, lam: float = L0_LAMBDA,
                   prior_prec: float = 0.0, cost: str = "weights", clamp: bool = False, flops_weighted: bool = False,
                   example_input=None, reference_terms: bool = False) -> Tensor:
    """The penalty of every gate of ``model``, divided by N = ``num_samples``, required: the
    training-set size for the L0 paper's penalty, 1 for Dep-L0's (undivided, as its reference).
    ``lam`` defaults to ``defaults.L0_LAMBDA``. Returns a 0-dim tensor (0.0 without gates).

    * Channel gates placed by ``gate_channels`` (L0-HC and Dep-L0): ``coupled_penalty`` over them,
      in module order; ``clamp`` clamps P(z != 0) to [1e-6, 1 - 1e-6] as the reference does.
    * L0 layers: ``sum_g P(z_g != 0) * sum_{w in g}(lam_l + 0.5*prior_prec*w^2)`` (Louizos et al.),
      ``lam_l = lam``, or with ``cost="flops"`` ``lam * flops_per_weight`` (1 for a Linear, output
      H*W for a conv). Biases are not in the penalty. ``reference_terms=True`` computes it as the
      L0 reference code does (P clamped, bias terms: see ``L0Linear.l0_penalty``), for ``--recipe paper``.
    * Other ChannelGates: ``lam * cost_per_channel`` per expected open channel.
    ``cost="flops"`` needs ``example_input`` once (measured with a forward, remembered after).
    ``flops_weighted=True`` is an older spelling of ``cost="flops"``. Differentiable w.r.t.
    log_alpha (and w when prior_prec > 0).
    """
    for name, v in (("lam", lam), ("prior_prec", prior_prec)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"regularization: {name} must be a non-negative number, got {v!r}")
    if num_samples is None:
        raise ValueError("regularization: pass num_samples=len(train_set) (the penalty is per training "
                         "example, as in Louizos et al.; 1 leaves it unscaled)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"regularization: num_samples must be a positive int, got {num_samples!r}")
    if cost not in COSTS:
        raise ValueError(f"regularization: cost must be one of {COSTS}, got {cost!r}")
    if flops_weighted:
        cost = "flops"
    chain = chained_gates(model)
    if cost == "flops" and example_input is not None:
        record_flops_per_weight(model, example_input)
        if chain:
            measure_positions(model, example_input)
    in_chain = set(map(id, chain))
    total = coupled_penalty(chain, lam, cost, clamp) if chain else None
    for _, module in gate_modules(model):
        if id(module) in in_chain:
            continue
        scale = 1.0
        if cost == "flops" and hasattr(module, "weight"):
            scale = getattr(module, "flops_per_weight", None)
            if scale is None:
                raise ValueError("regularization: cost='flops' needs example_input (once) to measure "
                                 f"the FLOPs of {type(module).__name__} layers")
        term = (module.l0_penalty(lam, prior_prec, scale, reference_terms=True) if reference_terms
                else module.l0_penalty(lam, prior_prec, scale))
        total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total / num_samples
