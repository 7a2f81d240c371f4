"""L0 hard-concrete methods: unstructured ``l0`` (Louizos et al.) and structured ``l0_hc`` / ``dep_l0``."""
from __future__ import annotations

import torch

from sparsekern.pruning import defaults
from sparsekern.pruning.control import constraint
from sparsekern.pruning.control.calibration import calibrate_gates
from sparsekern.pruning.control.lambda_control import TargetLambda
from sparsekern.pruning.control.regularization import regularization
from sparsekern.pruning.methods import recipes
from sparsekern.pruning.methods.base import Method, flops_fraction
from sparsekern.pruning.surgery.channel_gating import chained_gates, measure_positions
from sparsekern.pruning.surgery.finalize import finalize
from sparsekern.pruning.surgery.modules import global_sparsity
from sparsekern.pruning.surgery.report import sparsity_report
from sparsekern.pruning.surgery.shrink import model_widths, shrink_model
from sparsekern.pruning.surgery.sparsify import sparsify
from sparsekern.pruning.surgery.transformer_gating import transformer_gates

# Structured gates (SPEC 3): the coupled penalty undivided by N; lambda per (k^2 C_in C_out) weight
# (cost="weights") or per multiply-accumulate (cost="flops", what the FLOPs target controls).
HC_LAMBDA = 1e-6
HC_GATE_LR = 1e-3  # SPEC 3: Adam, lr 1e-3, no decay, for the generator / independent log_alpha
# Under a target, unless --gate-lr is given, the gates' Adam rate is set by the length of the
# pruning phase: Adam moves a parameter by about its rate per step whatever the gradient's
# scale (noisy gradients move it less), so ``travel / steps`` gives a gate the same reach in a
# run of 200 steps or 20,000, for any number of gates. A generator's output moves by its fan-in
# times its parameters' steps, so it gets a smaller travel.
GATE_TRAVEL = 50.0
GENERATOR_TRAVEL = 0.7



def _lambda_controller(model, measure, target: float, total_steps: int, start: float) -> TargetLambda:
    """Adapts lambda so ``measure()`` follows the schedule to ``target``; calibrations keep it on it."""
    return TargetLambda(measure, target, total_steps, start,
                        calibrate=lambda value, final: calibrate_gates(model, measure, value, fill=final))

def _dual_controller(method, model, measure_expected, measure, target: float, total_steps: int):
    """``constraint.DualLambda`` with the gate calibration and the freeze of ``method``."""
    def on_freeze():
        method.freeze(model)
        method.set_gate_modes(model)

    method.pruning_steps = total_steps
    return constraint.DualLambda(measure_expected, measure, target, total_steps,
                                 calibrate=lambda value, final: calibrate_gates(model, measure, value, fill=final),
                                 on_freeze=on_freeze)


def _travel_lr(method, travel: float) -> float:
    return travel / method.pruning_steps


class L0(Method):
    """L0 of Louizos et al., one gate per weight (``defaults.L0_GRANULARITY``); ``lam`` per open
    weight / N, or ``target_sparsity``: a constraint on the expected density
    (``constraint.DualLambda``, then calibration, frozen gates and recovery). ``recipe="paper"``:
    the paper's gates (one per input neuron of a Linear, per output map of a conv) and the
    reference code's training (Adam on everything, L2 inside the penalty, log_alpha clamped
    after each step), its lambda adapted by ``TargetLambda`` under a target."""
    name = "l0"
    takes = ("lam", "gate_lr", "target_sparsity")
    gate_lr_default = defaults.L0_GATE_LR

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.target_sparsity is not None and config.target_sparsity <= 0:
            raise ValueError("method 'l0': target_sparsity must be > 0")

    def __init__(self, config):
        super().__init__(config)
        self.lam = defaults.L0_LAMBDA if config.lam is None else config.lam
        self.paper = config.recipe == "paper"
        self.target = None

    def sparsify(self, model):
        return recipes.sparsify_l0_paper(model) if self.paper else sparsify(model, "l0")

    def param_groups(self, model):
        if self.paper:  # one Adam over everything, no optimizer decay (the L2 is in the penalty)
            return [{"params": list(model.parameters()), "lr": self.config.lr, "weight_decay": 0.0, "name": "all"}]
        return super().param_groups(model)

    def optimizers(self, groups):
        if self.paper:
            return torch.optim.Adam(groups, lr=self.config.lr), None
        return super().optimizers(groups)

    def after_step(self, model) -> None:
        if self.paper:
            recipes.clamp_log_alpha(model)

    def controller(self, model, total_steps, example):
        if self.config.target_sparsity is None:
            return None
        measure, target = (lambda: global_sparsity(model)), self.config.target_sparsity
        if self.paper:
            self.target = _lambda_controller(model, measure, target, total_steps, self.lam)
            return self.target

        def expected():
            with torch.no_grad():
                return 1.0 - float(constraint.expected_density(model))

        self.target = _dual_controller(self, model, expected, measure, target, total_steps)
        return self.target

    def gate_lr(self) -> float:
        if self.config.gate_lr is None and isinstance(self.target, constraint.DualLambda):
            return _travel_lr(self, GATE_TRAVEL)
        return super().gate_lr()

    def penalty(self, model, num_samples):
        if self.frozen:
            return None
        if isinstance(self.target, constraint.DualLambda):  # the multiplier times the expected density
            return self.target.lam * constraint.expected_density(model) if self.target.lam else None
        lam = self.lam if self.target is None else self.target.lam
        if self.paper:
            return regularization(model, lam=lam, num_samples=num_samples, reference_terms=True,
                                          prior_prec=num_samples * self.config.weight_decay)
        return regularization(model, lam=lam, num_samples=num_samples)


class ChannelL0(Method):
    """Structured channel gates (SPEC 3): independent (``l0_hc``) or from Dep-L0's generator
    (``dep_l0``, ``dependency`` forward/backward); same placement and the same coupled penalty,
    so the two differ only in the dependency. ``target_flops``: a constraint on the expected
    FLOPs fraction (``constraint.DualLambda``), landing on that fraction of the dense FLOPs;
    else ``lam`` per weight of the chain (the paper's)."""
    name = "l0_hc"
    takes = ("lam", "gate_lr", "target_flops")
    gate_lr_default = HC_GATE_LR
    dependency_default: str | None = None

    def __init__(self, config):
        super().__init__(config)
        self.cost = "flops" if config.target_flops is not None else "weights"
        self.lam = HC_LAMBDA if config.lam is None else config.lam
        self.target = None

    def sparsify(self, model):
        dependency = getattr(self.config, "dependency", None) or self.dependency_default
        return sparsify(model, self.name, **({"dependency": dependency} if dependency else {}))

    def sparsity(self, model) -> float:
        """Fraction of channels closed (the structured progress number)."""
        gates = chained_gates(model)
        with torch.no_grad():
            kept = sum(int(g.kept().sum()) for g in gates)
        return 1.0 - kept / sum(g.num_channels for g in gates)

    def report(self, model, example):
        # Closed channels count as pruned weights: a gate zeroes no weight, so the plain count
        # showed every layer at 0% under a 50% total (issue 22).
        return sparsity_report(model, example, count_closed_channels=True)

    def final_sparsity(self, model, report, exported) -> float:
        """Weights removed: 1 - weights of the shrunk (or, unshrinkable, gated) layers / dense weights."""
        kept = sum(r["params"] * r["effective_flops"] / r["dense_flops"] for r in report["layers"] if r["dense_flops"])
        return 1.0 - kept / report["total"]["params"]

    def controller(self, model, total_steps, example):
        measure_positions(model, example)
        if self.config.target_flops is None:
            return None
        measure, target = (lambda: 1.0 - flops_fraction(model, example)), 1.0 - self.config.target_flops
        gates = chained_gates(model)
        # The multiplier weighs the expected FLOPs as a fraction of the dense model's, so one dual
        # rate suits every model and input size.
        self.scale = 1.0 / sparsity_report(model, example)["total"]["dense_flops"]

        def expected():
            """1 - expected FLOPs fraction: the eval model's FLOPs with the gated chain's share
            taken in expectation (the chain's expected minus its kept-channel FLOPs added)."""
            with torch.no_grad():
                total = sparsity_report(model, example)["total"]
                soft = constraint.chain_cost(gates, [float(g.open_probability().sum()) for g in gates])
                hard = constraint.chain_cost(gates, [float(g.kept().sum()) for g in gates])
                return 1.0 - (total["effective_flops"] + soft - hard) / total["dense_flops"]

        self.target = _dual_controller(self, model, expected, measure, target, total_steps)
        return self.target

    def gate_lr(self) -> float:
        if self.config.gate_lr is None and isinstance(self.target, constraint.DualLambda):
            return _travel_lr(self, GENERATOR_TRAVEL if self.name == "dep_l0" else GATE_TRAVEL)
        return super().gate_lr()

    def penalty(self, model, num_samples):
        if self.frozen:
            return None
        if isinstance(self.target, constraint.DualLambda):  # the multiplier times the expected FLOPs fraction
            if not self.target.lam:
                return None
            gates = chained_gates(model)
            return self.target.lam * self.scale * constraint.chain_cost(
                gates, [g.open_probability().sum() for g in gates])
        return regularization(model, num_samples=1, lam=self.lam, cost=self.cost, clamp=True)  # no target

    def widths(self, exported):
        if hasattr(exported, "transformer_widths"):  # the built-in transformer: heads and neurons
            return exported.transformer_widths()
        return model_widths(exported) if hasattr(exported, "gate_sites") else None

    def export(self, model):
        if transformer_gates(model):  # heads and neurons removed (transformer_shrink)
            return finalize(model)
        if hasattr(model, "gate_sites"):
            return shrink_model(model)
        return finalize(model, shrink=False).eval()


class DepL0(ChannelL0):
    name = "dep_l0"
    takes = ChannelL0.takes + ("dependency",)
    dependency_default = "forward"
