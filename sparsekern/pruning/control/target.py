"""``TargetSparsity``: make STR land on a requested sparsity without tuning its weight decay.

See docs/target_sparsity.md. In short: the wanted sparsity stays 0 for the first ``start_frac`` of
training, ramps to ``target`` by ``ramp_frac`` (the cubic schedule of GMP) and then holds. After
every optimizer step the controller solves exactly for the common shift delta of all threshold
logits s that makes the global sparsity of the STR layers equal the scheduled one, and applies it
(at most ``max_shift`` per step). Weight i of a layer is zero iff ``|w_i| <= sigmoid(s + delta)``,
i.e. iff ``delta >= logit(|w_i|) - s``: so the map delta -> sparsity is the empirical CDF of these
"critical shifts" and the wanted delta is one of their quantiles (one ``kthvalue``, no iteration,
no tuning, no lag, no overshoot). Each layer's s still moves by its own gradient, so STR learns
the per-layer budget (a common shift keeps the learned differences); the controller supplies the
overall pressure that weight decay on s supplies in the original. No layer is pruned beyond
``max_layer_sparsity``: its shift stops there and the other layers make up the difference.

Refit (``refit=True``, the default): when the ramp ends, the controller lands exactly on the
target, then fixes the pruned set and gives the survivors back their stored magnitudes: w <- w *
[|w| > threshold] and the thresholds are switched off (s = ``FROZEN_S``, where soft thresholding
is the identity). Soft thresholding shrinks every survivor by its threshold (a lasso's bias); at
high sparsity the thresholds end several times the layers' mean |w|, so the survivors start the
last third of training at a fraction of their size and the net cannot regrow them at a low
learning rate. Refitting the selected support without that shrinkage is the relaxed lasso's
remedy (Meinshausen 2007); it is what GMP's hard masks do all along. On LeNet-300/digits at 98%
it took STR from 85.4% to 91.6% (docs/RESULTS.md). The rest of training keeps the pruned weights
at zero (``step`` re-applies the mask after every optimizer step).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsekern.nn import STR_LAYERS
from sparsekern.pruning.surgery.modules import count_zeros, sparse_modules
from sparsekern.pruning.control.schedule import check_fraction, check_state, check_steps, cubic_sparsity

# A threshold logit at which soft thresholding is the identity: sigmoid(-100) < 4e-44, below every
# float32 weight that is not itself denormal (and its gradient with respect to s is as small).
FROZEN_S = -100.0


class TargetSparsity:
    """Drive the STR layers of ``model`` to global sparsity ``target`` over ``total_steps`` steps.

    Call ``step()`` after every ``optimizer.step()``. Arguments:
    start_frac: fraction of training before pruning starts. STR shrinks every surviving weight by
      its threshold, so pruning a freshly initialised net (weights not yet grown apart) shrinks
      all layers at once and the signal of a deep net vanishes (LeNet-5 stuck at chance);
    ramp_frac: fraction of training by which the scheduled sparsity has ramped 0 -> target (cubic);
    max_shift: largest change of the threshold logits per step (a safety net against jumps);
    max_layer_sparsity: no layer gets sparser than this through the controller's shift;
    calibrate: at the last step, solve once more so the final sparsity is the target;
    refit: at the end of the ramp, land on the target, fix the pruned set and refit the survivors
      without the thresholds' shrinkage for the rest of training (module docstring).
    The thresholds' optimizer weight decay can be anything small (0 is cleanest): the controller
    re-solves every step, so it cancels that force like any other on s.
    """

    def __init__(self, model: nn.Module, target: float, total_steps: int, *, start_frac: float = 0.2,
                 ramp_frac: float = 2 / 3, max_shift: float = 0.5, max_layer_sparsity: float = 0.99,
                 calibrate: bool = True, refit: bool = True):
        name = "TargetSparsity"
        self.target = check_fraction(name, "target", target, high_open=True)
        self.total_steps = check_steps(name, total_steps)
        self.start_frac = check_fraction(name, "start_frac", start_frac, high_open=True)
        self.ramp_frac = check_fraction(name, "ramp_frac", ramp_frac)
        if self.ramp_frac < self.start_frac:
            raise ValueError(f"{name}: ramp_frac ({ramp_frac}) must be >= start_frac ({start_frac})")
        self.max_layer_sparsity = check_fraction(name, "max_layer_sparsity", max_layer_sparsity, low_open=True)
        if isinstance(max_shift, bool) or not isinstance(max_shift, (int, float)) or not 0 < max_shift < float("inf"):
            raise ValueError(f"{name}: max_shift must be a positive number, got {max_shift!r}")
        self.max_shift = float(max_shift)
        self.layers = [m for _, m in sparse_modules(model) if isinstance(m, STR_LAYERS)]
        if not self.layers:
            raise ValueError("TargetSparsity: the model has no STR layers; call sparsify(model, method='str') first")
        self.total_weights = sum(layer.weight.numel() for layer in self.layers)
        self.calibrate_at_end = bool(calibrate)
        self.refit = bool(refit)
        self.masks: list[Tensor] | None = None  # the fixed pruned set once refitted
        self.reached: float | None = None  # sparsity training reached on its own when the ramp ended
        self.start_step = round(self.start_frac * total_steps)
        self.ramp_end = max(self.start_step + 1, round(self.ramp_frac * total_steps))
        self.step_count = 0
        self.last_shift = 0.0
        self.last_sparsity = self.measure()

    def scheduled(self, step: int | None = None) -> float:
        """The sparsity wanted after ``step`` steps (default: the current step)."""
        step = self.step_count if step is None else step
        return cubic_sparsity(step, self.start_step, self.ramp_end, 0.0, self.target)

    def measure(self) -> float:
        """Current global sparsity over the STR layers (zeros of the layers' effective weights)."""
        zeros, total = count_zeros(self.layers)
        return zeros / total

    def _critical_shifts(self) -> list[Tensor]:
        """Per layer, the flat shifts ``logit(|w|) - s`` at and above which each weight is zero."""
        out = []
        for layer in self.layers:
            w = layer.weight.detach().abs().float()
            s = layer.s.detach().float()
            s = s.reshape((-1,) + (1,) * (w.dim() - 1)) if s.numel() > 1 else s.reshape(())
            # |w| >= 1 is never below a sigmoid (+inf); an exact 0 gets a finite, very negative shift
            out.append((torch.logit(w.clamp(1e-30, 1.0)) - s).flatten())
        return out

    @staticmethod
    def _shift_for_zeros(c: Tensor, k: int) -> Tensor:
        """A delta with exactly k of the critical shifts ``c`` at or below it (up to ties): midway
        between the k-th and the next larger value (robust to rounding of logit vs sigmoid)."""
        k = min(k, int(torch.isfinite(c).sum()))
        if k == 0:
            return c.min() - 0.5
        below = torch.kthvalue(c, k).values
        rest = c[c > below]
        above = rest.min() if rest.numel() else below + 1.0
        return 0.5 * (below + torch.where(torch.isfinite(above), above, below + 1.0))

    def _solve(self, sparsity: float) -> Tensor:
        """Per-layer shifts (a common delta, capped per layer) that make the global sparsity ``sparsity``."""
        shifts = self._critical_shifts()
        k = round(sparsity * self.total_weights)
        most = [int(self.max_layer_sparsity * c.numel()) for c in shifts]  # zeros each cap allows
        caps: list[Tensor | None] = [None] * len(shifts)
        while True:  # cheap path: one pass; a layer past its cap is capped and the solve repeated
            capped = [c if cap is None else torch.where(c > cap, float("inf"), c) for c, cap in zip(shifts, caps)]
            delta = self._shift_for_zeros(torch.cat(capped), k)
            zeros = torch.stack([(c <= delta).sum() for c in shifts]).tolist()
            over = [i for i, (z, m) in enumerate(zip(zeros, most)) if caps[i] is None and z > m]
            if not over:
                break
            for i in over:
                caps[i] = torch.kthvalue(shifts[i], most[i]).values if most[i] > 0 else shifts[i].min() - 1.0
        return torch.stack([delta if cap is None else torch.minimum(delta, cap) for cap in caps])

    def _shift(self, shifts: Tensor) -> None:
        for layer, delta in zip(self.layers, shifts):
            layer.s.add_(delta.to(layer.s.dtype))

    @property
    def refitted(self) -> bool:
        return self.refit and self.step_count >= self.ramp_end

    @torch.no_grad()
    def step(self) -> float:
        """One controller update (after optimizer.step()); returns the measured sparsity."""
        self.step_count += 1
        if self.refitted and self.step_count > self.ramp_end:
            self._apply_masks()
        elif self.step_count > self.start_step:
            shifts = self._solve(self.scheduled()).clamp(-self.max_shift, self.max_shift)
            self._shift(shifts)
            self.last_shift = float(shifts.max())
            final = self.step_count == self.ramp_end if self.refit else \
                self.calibrate_at_end and self.step_count == self.total_steps
            if final:  # what the controller's own step reached, then exactly the target
                self.reached = self.measure()
                self._shift(self._solve(self.target))
            if self.refitted:
                self._fold()
        self.last_sparsity = self.measure()
        return self.last_sparsity

    def _fold(self) -> None:
        """Fix the pruned set and switch the thresholds off, survivors at their stored values."""
        self.masks = []
        for layer in self.layers:
            keep = layer.effective_weight() != 0
            layer.weight.mul_(keep)
            layer.s.fill_(FROZEN_S)
            self.masks.append(keep)

    def _apply_masks(self) -> None:
        for layer, keep in zip(self.layers, self.masks):
            layer.weight.mul_(keep)  # momentum would move the pruned weights off zero

    @torch.no_grad()
    def calibrate(self, target: float | None = None) -> float:
        """Shift the thresholds (common shift, layer caps respected) so the global sparsity is
        ``target`` (default: the controller's). Returns the sparsity reached. Once refitted the
        pruned set is fixed: nothing moves."""
        target = self.target if target is None else check_fraction("calibrate", "target", target)
        if not self.refitted:
            self._shift(self._solve(target))
        self.last_sparsity = self.measure()
        return self.last_sparsity

    def record(self) -> dict:
        """For ``summary.json``: what training reached on its own before the final solve."""
        out = {"controller": "target_sparsity", "target_pruned": self.target, "refit": self.refit,
               "ramp_end_step": self.ramp_end}
        if self.reached is not None:
            out.update({"pruned_by_training": self.reached, "target_reached_by_training": self.reached / self.target,
                        "calibration_moved": abs(self.target - self.reached)})
        return out

    def state_dict(self) -> dict:
        # the masks are state: between an optimizer step and this controller's, pruned weights are off zero
        return {"step_count": self.step_count, "target": self.target, "total_steps": self.total_steps,
                "refit": self.refit, "reached": self.reached,
                "masks": [m.cpu() for m in self.masks] if self.masks is not None else None}

    def load_state_dict(self, state: dict) -> None:
        check_state("TargetSparsity", state, self.target, self.total_steps)
        self.refit = bool(state.get("refit", False))  # the run's own setting (checkpoints before refit: off)
        self.step_count = int(state["step_count"])
        self.reached = state.get("reached")
        masks = state.get("masks")
        if self.refitted and (masks is None or [m.shape for m in masks] != [layer.weight.shape for layer in self.layers]):
            raise ValueError("TargetSparsity.load_state_dict: a refitted controller's state needs the masks of "
                             "its STR layers")
        self.masks = [m.to(layer.weight.device) for m, layer in zip(masks, self.layers)] if self.refitted else None
