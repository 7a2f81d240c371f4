"""``DualLambda``: the sparsity / FLOPs target of the gated methods as a constraint (issue 17).

Gallego-Posada et al., "Controlled Sparsity via Constrained Optimization" (NeurIPS 2022): instead
of tuning a penalty weight, train

    min_theta max_{lam >= 0}  L_data(theta) + lam * (c(theta) - b)

where ``c`` is the *expected* cost of the gates (the expected density for L0, the expected FLOPs
fraction for L0-HC / Dep-L0; differentiable, the same quantity the penalty's gradient moves) and
``b`` the allowed cost. ``lam`` is the Lagrange multiplier, updated by projected gradient ascent
after every step: ``lam <- max(0, lam + dual_lr * (c - b))``. Here ``b`` follows the cubic
schedule of GMP from dense at ``start_frac`` of training to the target at ``ramp_frac``.

Why not the previous controller (``control.lambda_control.TargetLambda``, kept for the library): it
multiplied lambda by ``exp(gain * error)`` every step with the error measured on the
*deterministic* count of open gates (eval gate > 0). That count does not move while the penalty
pushes every log_alpha down towards the eval threshold, and intermediate calibrations pinned it a
fraction of a point off the schedule (one gate's worth), so the error never reached 0 and
lambda grew without bound (x1940 on the hold-out signal set, penalty 250x the data loss): every
gate slid to P(z != 0) ~ 0.4, no gate stayed fully open in eval and the accuracy collapsed,
while the final calibration still "landed" on the target. With ``c`` expected, a step of the
penalty moves ``c`` at once (no dead zone); the ascent is additive and projected, so ``lam``
falls as soon as the constraint holds; with ``restart`` (the paper's "dual restarts") it is reset
to 0 then, so a multiplier built up on the ramp cannot over-prune past the schedule.

The violation is measured relative to the budget (``RELATIVE``): ``(c - b) / b``, not ``c - b``.
The absolute gap cannot tell a target of 90% from one of 98%: at 98% the allowed density is 2%,
so training at 4% density is 100% over budget but only 0.02 off in absolute terms, and the
multiplier grew by ``dual_lr * 0.02`` per step. Measured (LeNet-300, digits, seed 0, 98%): the
absolute gap left the expected pruned fraction at 0.88 when the calibration came (lambda 63,
still rising), the calibration then removed 10 points of weights (84% of what training had kept)
and the run fell to 23% accuracy; with the relative gap training reached 0.976 by itself, the
calibration moved 0.4 points and the run kept 92%. Early in the ramp ``b`` is close to 1 and the
two agree; ``record()`` reports how many times the budget training kept (``kept_over_budget``).

At ``freeze_frac`` of training the gates are made to agree with the target exactly
(``calibrate(target)``, moving only the gates at the boundary when training reached the target
on its own), frozen and deterministic (``on_freeze``), and the remaining steps fine-tune the
weights under the fixed mask: the calibration is followed by recovery, never at the last step.
``record()`` says how much of the target training reached before that calibration.
"""
from __future__ import annotations

import math

from sparsekern.pruning.control.schedule import check_fraction, check_state, check_steps, cubic_sparsity

# Rise of the multiplier per unit of violation over the whole pruning phase: the per-step dual
# rate is DUAL_TRAVEL / total_steps, so the multiplier responds within the same fraction of the
# schedule in a run of 200 steps or of 20,000 (the gates' Adam rate scales likewise, methods/l0.py).
DUAL_TRAVEL = 400.0
START_FRAC = 0.1  # no pruning pressure in the first 10% of the steps (the weights learn first)
RAMP_FRAC = 0.5  # the scheduled pruned fraction reaches the target at half of the pruning phase
FREEZE_FRAC = 0.75  # calibrate, freeze the gates and fine-tune the weights for the last quarter
RELATIVE = True  # violation measured relative to the allowed cost (module docstring)


class DualLambda:
    """Lagrange multiplier of ``expected pruned fraction >= scheduled`` (module docstring).

    measure_expected(): the pruned fraction in expectation over the gates (1 - expected cost);
    measure(): the deterministic pruned fraction (eval gates), what the target is stated in;
    calibrate(value, final): sets the gates so ``measure()`` is ``value``, returns it;
    on_freeze(): called once, after the calibration at ``freeze_frac`` (freeze the gates).
    """

    def __init__(self, measure_expected, measure, target: float, total_steps: int, *, lam: float = 0.0,
                 dual_lr: float | None = None, start_frac: float = START_FRAC, ramp_frac: float = RAMP_FRAC,
                 freeze_frac: float = FREEZE_FRAC, restart: bool = True, calibrate=None, on_freeze=None):
        name = "DualLambda"
        self.target = check_fraction(name, "target", target, low_open=True, high_open=True)
        self.total_steps = check_steps(name, total_steps)
        dual_lr = DUAL_TRAVEL / self.total_steps if dual_lr is None else dual_lr
        for field, v in (("lam", lam), ("dual_lr", dual_lr)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: {field} must be a finite number >= 0, got {v!r}")
        for field, v in (("start_frac", start_frac), ("ramp_frac", ramp_frac), ("freeze_frac", freeze_frac)):
            check_fraction(name, field, v)
        if not start_frac <= ramp_frac <= freeze_frac:
            raise ValueError(f"{name}: need start_frac <= ramp_frac <= freeze_frac, got "
                             f"{start_frac}, {ramp_frac}, {freeze_frac}")
        self.measure_expected, self.measure = measure_expected, measure
        self.lam, self.dual_lr, self.restart = float(lam), float(dual_lr), restart
        self.calibrate, self.on_freeze = calibrate, on_freeze
        self.start_step = round(start_frac * total_steps)
        self.ramp_end = max(self.start_step + 1, round(ramp_frac * total_steps))
        self.freeze_step = min(total_steps, max(self.ramp_end, round(freeze_frac * total_steps)))
        self.step_count = 0
        self.last_expected = 0.0
        self.last_measured = 0.0
        self.frozen = False
        self.max_lam = self.lam
        # what training reached before the calibration, and what the calibration moved
        self.reached = None  # deterministic pruned fraction just before calibrating
        self.reached_expected = None
        self.calibrated = None  # after calibrating

    def scheduled(self, step: int | None = None) -> float:
        step = self.step_count if step is None else step
        return cubic_sparsity(step, self.start_step, self.ramp_end, 0.0, self.target)

    def step(self) -> float:
        if self.frozen:
            return self.last_measured
        self.step_count += 1
        self.last_expected = float(self.measure_expected())
        scheduled = self.scheduled()
        violation = scheduled - self.last_expected  # > 0: the expected cost is over budget
        if RELATIVE:
            violation /= max(1.0 - scheduled, 1e-6)
        if self.restart and violation <= 0:
            self.lam = 0.0
        else:
            self.lam = max(0.0, self.lam + self.dual_lr * violation)
        self.max_lam = max(self.max_lam, self.lam)
        if self.step_count >= self.freeze_step:
            self.freeze()
        return self.last_measured

    def freeze(self) -> None:
        """Calibrate onto the target (recording what training reached) and freeze the gates."""
        if self.frozen:
            return
        self.reached = float(self.measure())
        self.reached_expected = self.last_expected
        self.last_measured = self.reached
        if self.calibrate is not None:
            self.last_measured = float(self.calibrate(self.target, True))
        self.calibrated = self.last_measured
        self.frozen = True
        self.lam = 0.0
        if self.on_freeze is not None:
            self.on_freeze()

    def record(self) -> dict:
        """For ``summary.json``: the target, what training reached on its own and what the
        calibration moved (fractions of the dense cost), the largest multiplier."""
        out = {"controller": "dual", "target_pruned": self.target, "freeze_step": self.freeze_step,
               "max_lambda": self.max_lam}
        if self.reached is not None:
            out.update({"pruned_by_training": self.reached, "expected_pruned_by_training": self.reached_expected,
                        "pruned_after_calibration": self.calibrated,
                        "target_reached_by_training": self.reached / self.target,
                        "kept_over_budget": (1.0 - self.reached) / (1.0 - self.target),
                        "calibration_moved": abs(self.calibrated - self.reached)})
        return out

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "target": self.target, "total_steps": self.total_steps,
                "lam": self.lam, "max_lam": self.max_lam, "frozen": self.frozen, "reached": self.reached,
                "reached_expected": self.reached_expected, "calibrated": self.calibrated,
                "last_measured": self.last_measured}

    def load_state_dict(self, state: dict) -> None:
        check_state("DualLambda", state, self.target, self.total_steps)
        self.step_count, self.lam = int(state["step_count"]), float(state["lam"])
        self.max_lam = float(state.get("max_lam", self.lam))
        self.reached, self.calibrated = state.get("reached"), state.get("calibrated")
        self.reached_expected = state.get("reached_expected")
        self.last_measured = float(state.get("last_measured", 0.0))
        if state.get("frozen") and not self.frozen:  # the gates in the checkpoint are the calibrated ones
            self.frozen = True
            if self.on_freeze is not None:
                self.on_freeze()


# ---------------------------------------------------------------- the expected costs
def expected_density(model):
    """Differentiable expected fraction of non-zero weights over the sparse layers: an L0 layer's
    gate g keeps its ``group_sizes()`` weights with probability P(z_g != 0); other sparse layers
    count their current non-zeros. The deterministic counterpart is ``1 - global_sparsity``."""
    import torch

    from sparsekern.nn import L0_WEIGHT_LAYERS
    from sparsekern.pruning.surgery.modules import sparse_modules

    kept, total = None, 0
    for _, m in sparse_modules(model):
        if isinstance(m, L0_WEIGHT_LAYERS):
            term = m.open_probability().sum() * m.group_sizes()
        else:
            with torch.no_grad():
                term = m.nonzero_mask().sum().to(torch.float32)
        kept = term if kept is None else kept + term
        total += m.weight.numel()
    return kept / total


def chain_cost(gates, counts) -> float:
    """The FLOPs of the gated chain (``regularization.coupled_penalty`` at lam 1, cost="flops")
    with channel counts ``counts`` (one per gate: expected or kept)."""
    total, previous = 0.0, None
    for gate, count in zip(gates, counts):
        link = gate.chain
        previous = float(link.in_channels) if previous is None else previous
        total = total + previous * count * link.kernel_area * link.positions
        previous = count
    return total
