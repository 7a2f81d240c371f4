"""Issue 17: the gated methods reach their targets by training, on data their defaults were not
tuned on, without collapsing.

A 1-D signal task (``sparsekern.data.generated``: random-phase chirps, every input sample
informative), 2,000 training examples, batch 16, 20 epochs (2,500 steps). Measured at the commit
that added this test (seed 0): dense 0.62 (12 epochs); L0-HC at 50% FLOPs 0.62, L0 at 90% 0.61;
L0 at 98% (added with the relative constraint gap): 0.559.
The previous controller (multiplicative lambda on the thresholded count, calibrations pinning it)
gave 0.48 and 0.34 in this setting: its lambda wound up while the count sat one gate off the
schedule, and the final calibration pruned what training had not.
"""
from __future__ import annotations

import numpy as np
import pytest

from sparsekern.data.generated import _signals
from sparsekern.pruning.train.loop import PruneConfig, run_prune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "signals.npz"
    (xtr, ytr), (xte, yte) = _signals(2000, 1, 0.4, 0.15), _signals(1000, 2, 0.4, 0.15)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.mark.parametrize("method, options, measured, least", [
    ("l0_hc", {"target_flops": 0.5}, lambda s: s["flops"] / s["dense_flops"], 0.55),
    ("l0", {"target_sparsity": 0.9}, lambda s: 1 - s["sparsity"], 0.55),
    # 2% of the weights allowed: measured 0.559, kept 1.15x the budget before the calibration;
    # with the violation in absolute terms (c - b) training kept 5.4x the budget, the
    # calibration removed 8.9 points at once and the run collapsed (0.301)
    ("l0", {"target_sparsity": 0.98}, lambda s: 1 - s["sparsity"], 0.45),
])
def test_gated_methods_train_to_their_target_on_held_out_signals(tmp_path, signals, method, options, measured, least):
    summary = run_prune(PruneConfig(method=method, model="lenet300", data=signals, epochs=20, batch_size=16,
                                    seed=0, out=str(tmp_path / method), progress=False, **options))
    wanted = options.get("target_flops", 1 - options.get("target_sparsity", 0))
    assert abs(measured(summary) - wanted) < 0.01, measured(summary)  # lands on the target
    control = summary["target_control"]
    # training itself reached the target; the calibration only settled the boundary gates
    assert control["target_reached_by_training"] > 0.9, control
    assert control["calibration_moved"] < 0.05, control
    assert control["kept_over_budget"] < 1.5, control  # measured relative to what the target allows
    assert not summary["health"]["collapsed"], summary["health"]
    assert summary["accuracy"] > least, summary["accuracy"]  # dense: 0.62; the old controller: 0.48 / 0.34


def test_health_flags_a_collapse():
    from sparsekern.pruning.train.health import run_health

    rows = [{"train_acc": a} for a in (0.5, 0.7, 0.72, 0.4, 0.35)]
    health = run_health(rows, 0.3, 10)
    assert health["collapsed"] and health["train_acc_peak"] == 0.72 and health["train_acc_low_after_peak"] == 0.35
    assert run_health(rows[:3], 0.7, 10)["collapsed"] is False
    near = run_health(rows[:3], 0.15, 10)
    assert near["collapsed"] and near["near_chance"]
    short = run_health(rows[:3], 0.7, 10, {"target_reached_by_training": 0.5, "calibration_moved": 0.25})
    assert not short["collapsed"] and any("reached only 50%" in w for w in short["warnings"])
