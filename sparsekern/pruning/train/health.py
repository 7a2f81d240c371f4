"""Checks that stop or flag a run that went wrong: a non-finite loss stops it (the last good
checkpoint is kept)."""
from __future__ import annotations

import math

from sparsekern.pruning.train.config import PruneConfig


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


def check_finite(loss: float, epoch: int, step: int, config: PruneConfig) -> None:
    if not math.isfinite(loss):
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {config.out!r}" if epoch
                else "no checkpoint was written")
        raise TrainingDiverged(f"training loss became {loss} in epoch {epoch + 1} (step {step + 1}); "
                               f"lower --lr or check the data; {kept}")


# ---------------------------------------------------------------- collapse (issue 17)
COLLAPSE_DROP = 0.2  # training accuracy this far (relative) below its own peak, later in the run
NEAR_CHANCE = 0.1  # final accuracy within this fraction of the way from chance to 1
CONTROLLER_SHORTFALL = 0.8  # training reached less than this fraction of the target on its own
CONTROLLER_EXCESS = 1.5  # or kept more than this many times the allowed cost (density / FLOPs)


def run_health(history: list[dict], accuracy: float, num_classes: int, control: dict | None = None) -> dict:
    """``summary["health"]``: whether the run collapsed, and why.

    ``collapsed`` is true when the training accuracy fell more than ``COLLAPSE_DROP`` (relative)
    below its own peak in a later epoch, or the final test accuracy is near chance (less than
    ``NEAR_CHANCE`` of the way from 1/classes to 1). ``warnings`` says it in words, and also when a
    target controller reached less than ``CONTROLLER_SHORTFALL`` of its target before the final
    calibration pruned the rest, or kept more than ``CONTROLLER_EXCESS`` times the allowed cost (at
    a 98% target, 90% pruned is 92% of the target but 5x the allowed density; ``control``: the
    controller's ``record()``).
    """
    out: dict = {"warnings": []}
    if history:
        accs = [float(r["train_acc"]) for r in history]
        peak_at = max(range(len(accs)), key=accs.__getitem__)
        low_at = min(range(peak_at, len(accs)), key=accs.__getitem__)
        peak, low = accs[peak_at], accs[low_at]
        out.update({"train_acc_peak": peak, "train_acc_peak_epoch": peak_at + 1,
                    "train_acc_low_after_peak": low, "train_acc_final": accs[-1]})
        if peak > 0 and low < (1 - COLLAPSE_DROP) * peak:
            out["warnings"].append(f"collapse: training accuracy fell from its peak {peak:.3f} (epoch {peak_at + 1}) "
                                   f"to {low:.3f} (epoch {low_at + 1}) while pruning")
    chance = 1.0 / max(num_classes, 1)
    near = accuracy < chance + NEAR_CHANCE * (1 - chance)
    out["near_chance"] = bool(near)
    if near:
        out["warnings"].append(f"collapse: final test accuracy {accuracy:.3f} is near chance ({chance:.3f})")
    out["collapsed"] = bool(out["warnings"])
    reached = (control or {}).get("target_reached_by_training")
    if reached is not None and reached < CONTROLLER_SHORTFALL:
        out["warnings"].append(f"target: training reached only {100 * reached:.0f}% of the target on its own; "
                               f"the calibration moved {100 * control['calibration_moved']:.1f} points at once")
    excess = (control or {}).get("kept_over_budget")
    if excess is not None and excess > CONTROLLER_EXCESS and (reached is None or reached >= CONTROLLER_SHORTFALL):
        out["warnings"].append(f"target: training kept {excess:.1f}x the allowed cost; the calibration removed "
                               f"{100 * (1 - 1 / excess):.0f}% of what training kept at once")
    return out


def health_fields(summary: dict, history: list[dict], info: dict, controller, *, show: bool = True) -> dict:
    """Summary fields ``target_control`` (a target controller's ``record()``, if it has one) and
    ``health`` (``run_health``); each warning is also printed to stderr (``show``)."""
    import sys

    control = controller.record() if hasattr(controller, "record") else None
    health = run_health(history, float(summary["accuracy"]), int(info.get("num_classes", 0) or 0), control)
    if show:
        for line in health["warnings"]:
            print(f"sparsekern prune: WARNING: {line}", file=sys.stderr, flush=True)
    return {**({"target_control": control} if control is not None else {}), "health": health}
