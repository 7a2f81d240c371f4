"""The expected-L0 penalty of every hard-concrete gate in a model (docs/math.md section 2)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsekern.pruning.flops import record_flops_per_weight
from sparsekern.pruning.modules import gate_modules
from sparsekern.pruning.recipes import L0_LAMBDA


def regularization(model: nn.Module, *, num_samples: int | None = None, lam: float = L0_LAMBDA,
                   prior_prec: float = 0.0, flops_weighted: bool = False, example_input=None,
                   reference_terms: bool = False) -> Tensor:
    """``(1/N) * sum over gated modules of sum_g P(z_g != 0) * sum_{w in g}(lam_l + 0.5*prior_prec*w^2)``.

    N = ``num_samples``, required: the training-set size, as in the L0 paper (pass 1 to leave
    the sum unscaled, ``lam`` then being the per-step weight). Without the division the default
    ``lam`` closes every gate in a few steps. ``lam`` defaults to ``recipes.L0_LAMBDA``.
    Biases are not in the penalty (decay them with the optimizer if wanted).
    ``lam_l = lam``, or with ``flops_weighted=True`` ``lam * flops_per_weight`` of the layer
    (1 for a Linear, output H*W for a conv: the FLOPs one open weight costs),
    measured by a forward of ``example_input`` (recorded once; later calls may omit it).
    A ChannelGate costs ``lam * cost_per_channel`` per open channel (no weights of its own).
    ``reference_terms=True`` computes it as the L0 reference code does (P clamped to
    [1e-6, 1 - 1e-6], bias terms: see ``L0Linear.l0_penalty``), for ``--recipe paper``.
    Returns a 0-dim tensor (0.0 if the model has no gates), differentiable w.r.t. log_alpha
    (and w when prior_prec > 0).
    """
    for name, v in (("lam", lam), ("prior_prec", prior_prec)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"regularization: {name} must be a non-negative number, got {v!r}")
    if num_samples is None:
        raise ValueError("regularization: pass num_samples=len(train_set) (the penalty is per training "
                         "example, as in Louizos et al.; 1 leaves it unscaled)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"regularization: num_samples must be a positive int, got {num_samples!r}")
    gates = [m for _, m in gate_modules(model)]
    if flops_weighted and example_input is not None:
        record_flops_per_weight(model, example_input)
    total = None
    for module in gates:
        scale = 1.0
        if flops_weighted and hasattr(module, "weight"):
            scale = getattr(module, "flops_per_weight", None)
            if scale is None:
                raise ValueError("regularization: flops_weighted=True needs example_input (once) to measure "
                                 f"the FLOPs of {type(module).__name__} layers")
        term = (module.l0_penalty(lam, prior_prec, scale, reference_terms=True) if reference_terms
                else module.l0_penalty(lam, prior_prec, scale))
        total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total / num_samples
