"""Gradual magnitude pruning (Zhu & Gupta 2017), the baseline: masks set by weight magnitude."""
from __future__ import annotations

import torch
from torch import nn

from sparsekern.nn import MASKED_LAYERS
from sparsekern.pruning.surgery.modules import sparse_modules
from sparsekern.pruning.control.schedule import check_fraction, check_state, check_steps, cubic_sparsity


class GMP:
    """Prunes the masked layers of ``model`` (``sparsify(model, "gmp")``) to ``target`` sparsity.

    Sparsity follows ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n*dt))^3`` from ``t0 = start_frac *
    total_steps`` to ``t0 + n*dt = end_frac * total_steps``; masks are recomputed every
    ``frequency`` steps in that range (and at its end; None: 1/20 of the range), keeping the largest-magnitude weights
    of each layer (``scope="layer"``, the paper's uniform sparsity) or of all layers together
    (``scope="global"``). Call ``step()`` after every ``optimizer.step()``: it also re-applies
    the masks to the weights, so pruned weights stay exactly zero.
    """

    def __init__(self, model: nn.Module, target: float, total_steps: int, *, start_frac: float = 0.0,
                 end_frac: float = 0.75, frequency: int | None = None, initial_sparsity: float = 0.0,
                 scope: str = "layer"):
        name = "GMP"
        self.target = check_fraction(name, "target", target, high_open=True)
        self.total_steps = check_steps(name, total_steps)
        start_frac = check_fraction(name, "start_frac", start_frac)
        end_frac = check_fraction(name, "end_frac", end_frac)
        if end_frac < start_frac:
            raise ValueError(f"GMP: end_frac ({end_frac}) must be >= start_frac ({start_frac})")
        if frequency is not None and (isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1):
            raise ValueError(f"GMP: frequency must be a positive int or None, got {frequency!r}")
        if scope not in ("layer", "global"):
            raise ValueError(f"GMP: scope must be 'layer' or 'global', got {scope!r}")
        self.initial_sparsity = check_fraction(name, "initial_sparsity", initial_sparsity, high_open=True)
        self.layers = [m for _, m in sparse_modules(model) if isinstance(m, MASKED_LAYERS)]
        if not self.layers:
            raise ValueError("GMP: the model has no masked layers; call sparsify(model, method='gmp') first")
        self.start_step = round(start_frac * total_steps)
        self.end_step = round(end_frac * total_steps)
        if frequency is None:  # about 20 pruning events over the ramp, whatever the run length
            frequency = max(1, round((self.end_step - self.start_step) / 20))
        self.frequency, self.scope = frequency, scope
        self.step_count = 0

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, self.start_step, self.end_step, self.initial_sparsity, self.target)

    def is_pruning_step(self, step: int) -> bool:
        last = max(self.end_step, 1)  # steps count from 1: an end at step 0 prunes at the first step
        in_range = self.start_step <= step <= last
        return in_range and ((step - self.start_step) % self.frequency == 0 or step == last)

    @torch.no_grad()
    def prune(self, sparsity: float) -> None:
        """Set the masks so that a fraction ``sparsity`` of weights (per layer or global) is pruned."""
        if self.scope == "layer":
            for layer in self.layers:
                layer.mask.copy_(_keep_largest(layer.effective_weight().abs(), sparsity))
            return
        scores = torch.cat([layer.effective_weight().abs().flatten().float() for layer in self.layers])
        keep = _keep_largest(scores, sparsity)
        for layer, part in zip(self.layers, keep.split([l.weight.numel() for l in self.layers])):
            layer.mask.copy_(part.reshape(layer.mask.shape))

    @torch.no_grad()
    def apply_masks(self) -> None:
        for layer in self.layers:
            layer.apply_mask_()

    def step(self) -> float:
        """Advance one training step; prune if scheduled; re-apply masks. Returns the scheduled sparsity."""
        self.step_count += 1
        if self.is_pruning_step(self.step_count):
            self.prune(self.sparsity_at(self.step_count))
        self.apply_masks()
        return self.sparsity_at(self.step_count)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "target": self.target, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        check_state("GMP", state, self.target, self.total_steps)
        self.step_count = int(state["step_count"])


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping the ``round((1 - sparsity) * n)`` largest scores (ties broken by index)."""
    n = scores.numel()
    n_keep = n - int(round(sparsity * n))
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if n_keep > 0:
        keep[torch.topk(scores.flatten(), n_keep, sorted=False).indices] = True
    return keep.reshape(scores.shape)

