"""Dense training, STR and GMP."""
from __future__ import annotations

import torch

from sparsekern.nn import MASKED_LAYERS, STR_LAYERS
from sparsekern.pruning.control import gmp
from sparsekern.pruning.control.target import FROZEN_S, TargetSparsity
from sparsekern.pruning.methods.base import Method
from sparsekern.pruning.methods.optim import param_groups
from sparsekern.pruning.surgery.modules import sparse_modules
from sparsekern.pruning.surgery.sparsify import sparsify


class Dense(Method):
    """No pruning; the same parameter groups as the sparse runs (no decay on biases/norms): comparable."""
    name = "dense"

    def sparsity(self, model) -> float:
        return 0.0

    def final_sparsity(self, model, report, exported) -> float:
        return 0.0

    def has_gates_or_thresholds(self) -> bool:
        return False

    def export(self, model):
        import copy
        return copy.deepcopy(model).eval()


class STR(Method):
    """Soft-threshold reparameterization; ``lam`` is the thresholds' weight decay (the paper's knob),
    or ``target_sparsity`` drives ``TargetSparsity``."""
    name = "str"
    takes = ("target_sparsity", "lam")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.target_sparsity is not None and config.lam is not None:
            raise ValueError("method 'str' takes target_sparsity or lambda, not both")

    def sparsify(self, model):
        opts = {"s_init": self.config.s_init} if self.config.s_init is not None else {}
        return sparsify(model, "str", **opts)

    def param_groups(self, model):
        c = self.config
        decay = c.lam if c.lam is not None else (0.0 if c.target_sparsity is not None else None)
        return param_groups(model, c.lr, c.weight_decay, threshold_weight_decay=decay,
                                    no_decay_norm_and_bias=c.recipe != "paper")  # the STR code decays them all

    def controller(self, model, total_steps, example):
        if self.config.target_sparsity is None:
            return None
        return TargetSparsity(model, self.config.target_sparsity, total_steps)

    @torch.no_grad()
    def freeze(self, model) -> None:
        """Fine-tuning keeps the pruned set: the thresholds are folded into the weights (the same
        function: soft_threshold(w_eff, FROZEN_S) = w_eff) and frozen, and the zeros are a fixed mask.
        With a live threshold, weights would cross it and the sparsity drift (0.80 -> 0.61)."""
        super().freeze(model)
        self.masks = []
        for _, layer in sparse_modules(model):
            if isinstance(layer, STR_LAYERS):
                layer.s.requires_grad_(False)
                if not bool((layer.s == FROZEN_S).all()):  # not yet folded (idempotent across resumes)
                    layer.weight.copy_(layer.effective_weight())
                    layer.s.fill_(FROZEN_S)
                self.masks.append((layer.weight, layer.weight != 0))

    @torch.no_grad()
    def after_step(self, model) -> None:
        if self.frozen:  # momentum would move the pruned weights off zero
            for weight, keep in self.masks:
                weight.mul_(keep)


class GMP(Method):
    """Gradual magnitude pruning to ``target_sparsity`` (the baseline)."""
    name = "gmp"
    takes = ("target_sparsity",)

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.target_sparsity is None:
            raise ValueError("method 'gmp' needs target_sparsity (and no lambda)")

    def sparsify(self, model):
        return sparsify(model, "gmp")

    def has_gates_or_thresholds(self) -> bool:
        return False

    def controller(self, model, total_steps, example):
        return gmp.GMP(model, self.config.target_sparsity, total_steps)

    @torch.no_grad()
    def after_step(self, model) -> None:
        if self.frozen:  # the controller (which re-applies the masks) is not stepped when fine-tuning
            for _, layer in sparse_modules(model):
                if isinstance(layer, MASKED_LAYERS):
                    layer.apply_mask_()
