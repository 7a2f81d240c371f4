"""The `sparsekern` command line end to end on tiny settings, and its error exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import cli_error
from sparsekern.cli import main
from sparsekern.cli.export import finalized_architecture
from sparsekern.data import load_dataset


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRUNE = ["prune", "--model", "lenet300", "--data", "digits", "--epochs", "1", "--seed", "1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One dense and one STR run, shared by the tests below."""
    base = tmp_path_factory.mktemp("runs")
    made = {}
    for method, extra in [("dense", []), ("str", ["--target-sparsity", "0.5", "--backend", "torch"])]:
        out = str(base / method)
        assert main(PRUNE + ["--method", method, "--out", out] + extra) == 0
        made[method] = out
    return made


@pytest.mark.parametrize("method", ["dense", "str"])
def test_prune_writes_the_run_directory(runs, method):
    out = runs[method]
    for name in ("config.json", "checkpoint.pt", "log.csv", "log.jsonl", "summary.json", "model.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("accuracy", "sparsity", "params", "nonzero_params", "flops", "dense_flops"):
        assert key in summary
    assert summary["left_dense"] == []  # LeNet-300 has no layer a method leaves dense (the report lists them)
    # One epoch is far above chance (0.1); pruning half the weights within that epoch costs accuracy.
    assert (0.5 if method == "dense" else 0.2) < summary["accuracy"] <= 1.0
    assert summary["dense_flops"] == 64 * 300 + 300 * 100 + 100 * 10
    if method == "dense":
        assert summary["sparsity"] == 0.0 and summary["flops"] == summary["dense_flops"]
    else:
        assert summary["sparsity"] > 0.2 and summary["flops"] < summary["dense_flops"]
        assert summary["nonzero_params"] < summary["params"]
    lines = open(os.path.join(out, "log.csv")).read().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch,step,train_loss")


@pytest.mark.parametrize("method", ["dense", "str"])
def test_report_prints_table_and_writes_pngs(runs, method, capsys):
    assert main(["report", runs[method]]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "total" in text and "sparsity" in text
    pngs = ["curves.png"] + (["sparsity_budget.png"] if method != "dense" else [])  # dense: no budget
    for name in pngs:
        with open(os.path.join(runs[method], name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(os.path.join(runs[method], "sparsity_budget.png")) == (method != "dense")


@pytest.mark.parametrize("method", ["dense", "str"])
def test_export_loads_into_the_finalized_architecture(runs, method, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", runs[method], "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = finalized_architecture(runs[method])
    model.load_state_dict(state)  # strict
    model.eval()
    _, test, _ = load_dataset("digits")
    x, y = test.tensors
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    summary = json.load(open(os.path.join(runs[method], "summary.json")))
    assert accuracy == pytest.approx(summary["accuracy"], abs=1e-9)
    zeros = sum(int((state[f"{n}.weight"] == 0).sum()) for n in ("fc1", "fc2", "fc3"))
    assert zeros / summary["dense_flops"] == pytest.approx(summary["sparsity"])


def test_error_exit_codes(tmp_path, capsys, runs):
    out = str(tmp_path / "o")
    assert "--method" in cli_error(["prune", "--method", "magic", "--out", out], capsys)
    assert "epochs" in cli_error(["prune", "--epochs", "0", "--out", out], capsys)
    assert "--lambda" in cli_error(["prune", "--target-sparsity", "0.9", "--lambda", "1", "--out", out], capsys)
    assert "target_sparsity" in cli_error(["prune", "--target-sparsity", "1.5", "--method", "str", "--out", out],
                                       capsys)
    assert "does not take gate_lr" in cli_error(["prune", "--method", "str", "--gate-lr", "0.1", "--out", out], capsys)
    assert "gate_lr" in cli_error(["prune", "--method", "l0", "--gate-lr", "-1", "--out", out], capsys)
    assert "no_such_dir" in cli_error(["prune", "--data", str(tmp_path / "no_such_dir"), "--out", out], capsys)
    assert not os.path.exists(out)  # a bad --data leaves nothing behind
    assert "already holds a run" in cli_error(PRUNE + ["--out", runs["dense"]], capsys)
    assert "does not exist" in cli_error(["report", str(tmp_path / "absent")], capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    assert "summary.json" in cli_error(["report", str(broken)], capsys)
    (broken / "summary.json").write_text("{not json")
    (broken / "log.jsonl").write_text("")
    assert "not JSON" in cli_error(["report", str(broken)], capsys)
    assert "model.pt" in cli_error(["export", str(broken), "--out", str(tmp_path / "x.pt")], capsys)
    (broken / "model.pt").write_bytes(b"\x00garbage")
    (broken / "config.json").write_text(open(os.path.join(runs["dense"], "config.json")).read())
    assert "corrupt" in cli_error(["export", str(broken), "--out", str(tmp_path / "x.pt")], capsys)
    assert "choice" in cli_error(["frobnicate"], capsys)


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONWARNINGS": "ignore"}
    bad = subprocess.run([sys.executable, "-m", "sparsekern", "report", str(tmp_path / "missing")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("sparsekern: error: run directory")
