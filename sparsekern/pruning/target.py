"""``TargetSparsity``: make STR land on a requested sparsity without tuning its weight decay.

See docs/target_sparsity.md. In short: a cubic schedule ramps the wanted sparsity from 0 to
``target`` over the first ``ramp_frac`` of training, then holds it. After every optimizer step
the controller measures the global sparsity S of the STR layers and its slope dS/d(delta) for a
common shift delta of all threshold logits s (two extra counts at s +- h), and adds
``delta = gain * (scheduled - S) / slope + I`` (clipped) to every s: a damped Newton step on the
measured, monotone map delta -> S, plus an integral term I that learns the steady pull of
training on s. Each layer's s still moves by its own gradient, so STR
learns the per-layer budget (the common shift keeps the learned differences); the controller
only supplies the overall pressure that weight decay on s supplies in the original. At the last
step ``calibrate()`` solves S(delta) = target exactly by bisection.
"""
from __future__ import annotations

import torch
from torch import nn

from sparsekern.nn import STR_LAYERS
from sparsekern.pruning.modules import count_zeros, sparse_modules
from sparsekern.pruning.schedule import check_fraction, check_state, check_steps, cubic_sparsity


class TargetSparsity:
    """Drive the STR layers of ``model`` to global sparsity ``target`` over ``total_steps`` steps.

    Call ``step()`` after every ``optimizer.step()``. Arguments:
    ramp_frac: fraction of training over which the scheduled sparsity ramps 0 -> target (cubic);
    gain: fraction of the estimated shift applied per step (1 = full Newton step; smaller damps
      the noise of training);
    integral_gain: how fast the integral term learns the steady pull of training on s (without it
      a proportional controller lags the schedule by that pull);
    max_shift: largest change of the threshold logits per step;
    probe: the logit step h of the slope estimate;
    calibrate: at the last step, shift all thresholds by a common amount to hit the target exactly.
    The thresholds' optimizer weight decay can be anything small (0 is cleanest): the controller
    compensates it like any other force on s.
    """

    def __init__(self, model: nn.Module, target: float, total_steps: int, *, ramp_frac: float = 2 / 3,
                 gain: float = 0.5, integral_gain: float = 0.05, max_shift: float = 0.25, probe: float = 0.05,
                 calibrate: bool = True):
        name = "TargetSparsity"
        self.target = check_fraction(name, "target", target, high_open=True)
        self.total_steps = check_steps(name, total_steps)
        self.ramp_frac = check_fraction(name, "ramp_frac", ramp_frac)
        self.gain = check_fraction(name, "gain", gain, low_open=True)
        self.integral_gain = check_fraction(name, "integral_gain", integral_gain)
        for arg, v in (("max_shift", max_shift), ("probe", probe)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"{name}: {arg} must be a positive number, got {v!r}")
        self.max_shift, self.probe = float(max_shift), float(probe)
        self.layers = [m for _, m in sparse_modules(model) if isinstance(m, STR_LAYERS)]
        if not self.layers:
            raise ValueError("TargetSparsity: the model has no STR layers; call sparsify(model, method='str') first")
        self.total_weights = sum(layer.weight.numel() for layer in self.layers)
        self.calibrate_at_end = bool(calibrate)
        self.ramp_end = max(1, round(self.ramp_frac * total_steps))
        self.step_count = 0
        self.last_shift = 0.0
        self.integral = 0.0  # learned steady push per step: cancels the mean pull of training on s
        self.last_sparsity = self.measure()

    def scheduled(self, step: int | None = None) -> float:
        """The sparsity wanted after ``step`` steps (default: the current step)."""
        step = self.step_count if step is None else step
        return cubic_sparsity(step, 0, self.ramp_end, 0.0, self.target)

    def measure(self) -> float:
        """Current global sparsity over the STR layers (zeros of the layers' effective weights)."""
        zeros, total = count_zeros(self.layers)
        return zeros / total

    def _sparsity_if_shifted(self, delta: float) -> float:
        """Global sparsity if every s were shifted by delta (|w| <= sigmoid(s + delta) is a zero)."""
        zeros = []
        for layer in self.layers:
            w = layer.weight.detach()
            t = torch.sigmoid(layer.s.detach().float() + delta)
            t = t.reshape((-1,) + (1,) * (w.dim() - 1)) if t.numel() > 1 else t.reshape(())
            zeros.append((w.abs().float() <= t).sum())
        return int(torch.stack(zeros).sum().item()) / self.total_weights  # one device sync

    def _clip(self, v: float) -> float:
        return min(max(v, -self.max_shift), self.max_shift)

    def _shift(self, delta: float) -> None:
        for layer in self.layers:
            layer.s.add_(delta)

    @torch.no_grad()
    def step(self) -> float:
        """One controller update (after optimizer.step()); returns the measured sparsity."""
        self.step_count += 1
        error = self.scheduled() - self._sparsity_if_shifted(0.0)  # > 0: not sparse enough yet
        h = self.probe
        slope = (self._sparsity_if_shifted(h) - self._sparsity_if_shifted(-h)) / (2 * h)
        # No weight near the thresholds (slope 0): move at full speed toward the goal.
        newton = error / slope if slope > 0 else (self.max_shift if error > 0 else -self.max_shift) * (error != 0)
        newton = self._clip(newton)
        self.integral = self._clip(self.integral + self.integral_gain * newton)
        self.last_shift = self._clip(self.gain * newton + self.integral)
        self._shift(self.last_shift)
        if self.calibrate_at_end and self.step_count == self.total_steps:
            self.calibrate()
        self.last_sparsity = self.measure()
        return self.last_sparsity

    @torch.no_grad()
    def calibrate(self, target: float | None = None, iterations: int = 60) -> float:
        """Add one common offset to every threshold parameter s so the global sparsity is ``target``
        (default: the controller's); bisection on the offset, monotone since each layer's zero count
        grows with its threshold. Returns the sparsity reached."""
        target = self.target if target is None else check_fraction("calibrate", "target", target)
        f = self._sparsity_if_shifted
        lo, hi = -1.0, 1.0
        while f(lo) > target and lo > -1e4:
            lo *= 2
        while f(hi) < target and hi < 1e4:
            hi *= 2
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if f(mid) < target:
                lo = mid
            else:
                hi = mid
        self._shift(min((lo, hi), key=lambda d: abs(f(d) - target)))
        self.last_sparsity = self.measure()
        return self.last_sparsity

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "integral": self.integral, "target": self.target,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        check_state("TargetSparsity", state, self.target, self.total_steps)
        self.step_count = int(state["step_count"])
        self.integral = float(state.get("integral", 0.0))
