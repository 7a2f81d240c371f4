"""What GMP and TargetSparsity share: the cubic schedule of Zhu & Gupta (2017) and argument checks."""
from __future__ import annotations


def cubic_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """``final + (initial - final) * (1 - (step - start) / (end - start))^3``, clamped to [start, end]."""
    if end_step <= start_step:
        return final if step >= end_step else initial
    progress = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def check_fraction(owner: str, name: str, value, *, low_open: bool = False, high_open: bool = False) -> float:
    """A number in [0, 1] (bounds excluded on request), else a ValueError naming the argument."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}: {name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)


def check_steps(owner: str, total_steps) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"{owner}: total_steps must be a positive int, got {total_steps!r}")
    return total_steps


def check_state(owner: str, state, target: float, total_steps: int) -> None:
    """A controller state_dict must come from a controller with the same target and length."""
    if not isinstance(state, dict) or "step_count" not in state:
        raise ValueError(f"{owner}.load_state_dict: expected a dict with 'step_count', got {state!r}")
    if state.get("target", target) != target or state.get("total_steps", total_steps) != total_steps:
        raise ValueError(f"{owner}.load_state_dict: checkpoint is for target={state.get('target')}, "
                         f"total_steps={state.get('total_steps')}; this controller has target={target}, "
                         f"total_steps={total_steps}")
