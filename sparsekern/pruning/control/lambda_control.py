"""``TargetLambda``: adapt a penalty's lambda during training so a measured quantity lands on a target.

The wanted pruned fraction (1 - FLOPs fraction, or sparsity) follows the cubic schedule of
GMP from 0 at ``start_frac`` of training to ``target`` at ``ramp_frac``, then holds. After every
step lambda is multiplied by ``exp(gain * (wanted - measured) / target)``: too little pruned
raises it, too much lowers it (an integral controller on log lambda, so it holds a steady
lambda at the target). ``measure()`` is called every ``every`` steps.

``calibrate(value, final)`` (optional, ``pruning.calibration``) sets the gates so the measured
fraction is ``value``. It runs at the last step (``final``), to land exactly, and at ``calibrations`` evenly spaced
steps after ``start_frac`` whenever the measurement lags the schedule (or, once the schedule
holds, is off it either way) by more than ``tolerance``: the controller acts through the gates' learning, which lags (and a saturated
Dep-L0 generator hardly moves), so without these the last step could have to close half the
network at once, with no training left to adapt the weights.
"""
from __future__ import annotations

import math

from sparsekern.pruning.control.schedule import check_fraction, check_state, check_steps, cubic_sparsity


class TargetLambda:
    def __init__(self, measure, target: float, total_steps: int, lam: float, *, start_frac: float = 0.0,
                 ramp_frac: float = 0.5, gain: float = 0.1, every: int = 1, lam_bounds=(1e-12, 1e6), calibrate=None,
                 calibrations: int = 20, tolerance: float = 0.01):
        name = "TargetLambda"
        self.target = check_fraction(name, "target", target, low_open=True, high_open=True)
        self.total_steps = check_steps(name, total_steps)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ValueError(f"{name}: lam must be a positive number, got {lam!r}")
        self.measure, self.lam, self.gain, self.every, self.bounds = measure, float(lam), gain, every, lam_bounds
        self.start_step = round(start_frac * total_steps)
        self.ramp_end = max(self.start_step + 1, round(ramp_frac * total_steps))
        self.calibrate, self.tolerance = calibrate, tolerance
        self.calibrate_every = max(1, total_steps // calibrations)
        self.step_count = 0
        self.last_measured = 0.0

    def scheduled(self, step: int | None = None) -> float:
        step = self.step_count if step is None else step
        return cubic_sparsity(step, self.start_step, self.ramp_end, 0.0, self.target)

    def step(self) -> float:
        self.step_count += 1
        if self.step_count % self.every == 0 or self.step_count == self.total_steps:
            self.last_measured = float(self.measure())
            error = (self.scheduled() - self.last_measured) / self.target
            self.lam = min(max(self.lam * math.exp(self.gain * error), self.bounds[0]), self.bounds[1])
        if self.calibrate is not None:
            if self.step_count == self.total_steps:
                self.last_measured = float(self.calibrate(self.target, True))
            elif self.step_count > self.start_step and self.step_count % self.calibrate_every == 0:
                measured = self.last_measured if self.step_count % self.every == 0 else float(self.measure())
                wanted = self.scheduled()
                lag = wanted - measured  # on the ramp only a lag is corrected; the controller undoes a lead
                if lag > self.tolerance or (self.step_count >= self.ramp_end and -lag > self.tolerance):
                    self.last_measured = float(self.calibrate(wanted, False))
        return self.last_measured

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "target": self.target, "total_steps": self.total_steps,
                "lam": self.lam}

    def load_state_dict(self, state: dict) -> None:
        check_state("TargetLambda", state, self.target, self.total_steps)
        self.step_count, self.lam = int(state["step_count"]), float(state["lam"])
