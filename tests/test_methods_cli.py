"""Every pruning method from the command line (1-epoch smoke runs) and the targets they land on."""
from __future__ import annotations

import json
import os

import pytest
import torch

from sparsekern.cli import main
from sparsekern.cli.export import finalized_architecture
from sparsekern.data import load_dataset
from sparsekern.pruning.train.loop import PruneConfig, run_prune

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["prune", "--data", "digits", "--epochs", "1", "--seed", "2", "--no-progress"]
RUNS = {
    "dense": ["--method", "dense"],
    "str": ["--method", "str", "--target-sparsity", "0.5"],
    "gmp": ["--method", "gmp", "--target-sparsity", "0.5"],
    "l0": ["--method", "l0"],
    "l0_hc": ["--method", "l0_hc", "--finetune-epochs", "1"],
    "dep_l0": ["--method", "dep_l0", "--target-flops", "0.7", "--gate-lr", "0.003"],
    "dep_l0_backward": ["--method", "dep_l0", "--dependency", "backward", "--finetune-epochs", "1"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_method_runs_and_exports(tmp_path, name):
    model = {"l0_hc": "resnet20", "dep_l0": "resnet20", "dep_l0_backward": "lenet5"}.get(name, "lenet300")
    out = str(tmp_path / name)
    assert main(BASE + ["--model", model, "--out", out] + RUNS[name]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["accuracy"] > 0.3, summary["accuracy"]  # far above chance (0.1) after one epoch
    rows = open(os.path.join(out, "log.csv")).read().splitlines()
    assert len(rows) == 1 + 1 + ("--finetune-epochs" in RUNS[name])
    structured = name.startswith(("l0_hc", "dep_l0"))
    assert ("widths" in summary) == structured
    exported = tmp_path / "model.pt"
    assert main(["export", out, "--out", str(exported)]) == 0
    net = finalized_architecture(out)
    net.load_state_dict(torch.load(exported, weights_only=True))  # strict: the shrunk widths rebuilt
    net.eval()
    _, test, _ = load_dataset("digits")
    with torch.no_grad():
        accuracy = (net(test.tensors[0]).argmax(1) == test.tensors[1]).double().mean().item()
    assert accuracy == pytest.approx(summary["accuracy"], abs=1e-9)
    if structured:
        assert sum(p.numel() for p in net.parameters()) == summary["params"]
        assert summary["flops"] == pytest.approx(summary["dense_flops"] * summary["total"]["effective_flops"]
                                                 / summary["total"]["dense_flops"], abs=1)


@pytest.mark.parametrize("method,opts,measure", [
    ("l0_hc", {"target_flops": 0.5, "gate_lr": 0.1}, lambda s: s["flops"] / s["dense_flops"]),
    ("dep_l0", {"target_flops": 0.5, "gate_lr": 0.003}, lambda s: s["flops"] / s["dense_flops"]),
    ("l0", {"target_sparsity": 0.6}, lambda s: 1 - s["sparsity"]),
])
def test_targets_land_within_one_point(tmp_path, method, opts, measure):
    summary = run_prune(PruneConfig(method=method, model="lenet300", epochs=3, out=str(tmp_path / "r"),
                                    progress=False, seed=1, **opts))
    target = opts.get("target_flops", 1 - opts.get("target_sparsity", 0))
    assert abs(measure(summary) - target) <= 0.01, summary
    assert summary["accuracy"] > 0.5


def test_bad_method_options_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "x")
    for argv, word in [(["--method", "l0_hc", "--dependency", "forward"], "dependency"),
                       (["--method", "str", "--target-flops", "0.5"], "target_flops"),
                       (["--method", "dep_l0", "--target-flops", "1.5"], "target_flops"),
                       (["--method", "dep_l0", "--finetune-epochs", "-1"], "finetune_epochs"),
                       (["--method", "dep_l0", "--dependency", "sideways"], "--dependency")]:
        assert main(BASE + ["--out", out] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1, err
